-- One row per company row of a job, with the company's identity (company_key).
with source as (

    select * from {{ source('openfunnel', 'tam_companies') }}

)

select
    {{ dbt.concat(["job_id", "'|'", "cast(rank as " ~ dbt.type_string() ~ ")"]) }} as row_id,
    job_id,
    cast(rank as {{ dbt.type_bigint() }}) as rank,
    page,
    {{ company_key('domain', 'name') }} as company_key,
    name,
    domain,
    linkedin_url,
    headquarters,
    match_reason,
    match_score,
    source_band,
    source_query,
    employee_count,
    funding_stage,
    {{ string_list('industries') }} as industries,
    hq_city,
    hq_region,
    hq_country
from source
