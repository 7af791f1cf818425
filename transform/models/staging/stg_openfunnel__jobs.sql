-- One row per job, typed, with the entry it belongs to: the request fingerprint of a
-- tam_builds/lookalike_searches entry (every refresh of it), else the job id from config.
with source as (

    select * from {{ source('openfunnel', 'jobs') }}

)

select
    job_id,
    job_type,
    status,
    origin,
    coalesce(request_fingerprint, job_id) as entry_id,
    case when request_fingerprint is null then 'job_id' else 'request' end as entry_kind,
    request_fingerprint,
    query,
    cast(submitted_at as {{ dbt.type_timestamp() }}) as submitted_at,
    cast(terminal_at as {{ dbt.type_timestamp() }}) as terminal_at,
    -- When the job's rows were current: when it was submitted, else when it was seen done.
    cast(coalesce(submitted_at, terminal_at) as {{ dbt.type_timestamp() }}) as observed_at,
    error_message,
    tap_error,
    cast(processed as {{ dbt.type_bigint() }}) as processed,
    -- The manifest's row count: unique_count (TAM) or count (lookalike).
    cast(coalesce(unique_count, {{ adapter.quote('count') }}) as {{ dbt.type_bigint() }})
        as manifest_rows,
    cast(credits_consumed as {{ dbt.type_numeric() }}) as credits_consumed,
    partial,
    degraded,
    stop_reason,
    derived_query
from source
