{#- Adapter-specific pieces, each with a portable default (dbt's adapter.dispatch). -#}

{#- A company's identity: its domain (lower case, trimmed), else its name (prefixed, so
    that a name never equals a domain). Null when a row has neither. -#}
{% macro company_key(domain, name) -%}
    case
        when {{ domain }} is not null and trim({{ domain }}) <> '' then lower(trim({{ domain }}))
        when {{ name }} is not null and trim({{ name }}) <> ''
            then {{ dbt.concat(["'name:'", "lower(trim(" ~ name ~ "))"]) }}
    end
{%- endmacro %}

{#- A JSON list of strings (the company streams' `industries`) as one comma-separated
    text. Targets load Singer arrays as native arrays (PostgreSQL text[], Snowflake
    ARRAY, BigQuery REPEATED), target-duckdb as JSON. -#}
{% macro string_list(column) -%}
    {{ return(adapter.dispatch('string_list', 'openfunnel')(column)) }}
{%- endmacro %}

{% macro default__string_list(column) -%}
    array_to_string({{ column }}, ', ')
{%- endmacro %}

{% macro duckdb__string_list(column) -%}
    array_to_string(from_json({{ column }}, '["VARCHAR"]'), ', ')
{%- endmacro %}
