-- One row per company row of a job, with the company's identity (company_key).
with source as (

    select * from {{ source('openfunnel', 'lookalike_companies') }}

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
    company_size,
    employee_count
from source
