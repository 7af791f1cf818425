-- One row per company of each job, both families together: a company a job lists twice
-- (the same domain, or the same name without a domain) counts once, at its best rank.
-- Rows with neither a domain nor a name have no identity and are left out.
with companies as (

    select
        job_id, rank, company_key, name, domain, linkedin_url, headquarters, match_reason,
        employee_count, hq_country, funding_stage, industries,
        cast(null as {{ dbt.type_string() }}) as company_size
    from {{ ref('stg_openfunnel__tam_companies') }}

    union all

    select
        job_id, rank, company_key, name, domain, linkedin_url, headquarters, match_reason,
        employee_count,
        cast(null as {{ dbt.type_string() }}) as hq_country,
        cast(null as {{ dbt.type_string() }}) as funding_stage,
        cast(null as {{ dbt.type_string() }}) as industries,
        company_size
    from {{ ref('stg_openfunnel__lookalike_companies') }}

),

ranked as (

    select
        companies.*,
        row_number() over (partition by job_id, company_key order by rank) as nth
    from companies
    where company_key is not null

)

select
    {{ dbt.concat(["job_id", "'|'", "company_key"]) }} as job_company_id,
    job_id, rank, company_key, name, domain, linkedin_url, headquarters, match_reason,
    employee_count, hq_country, funding_stage, industries, company_size
from ranked
where nth = 1
