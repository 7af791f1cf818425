-- Each entry's market now: the companies of its latest complete job, one row per
-- company (by domain, else by name), with when the entry's jobs first and last listed it.
with refreshes as (

    select * from {{ ref('entry_refreshes') }}

),

companies as (

    select * from {{ ref('int_openfunnel__job_companies') }}

),

sightings as (

    select
        refreshes.entry_id,
        companies.company_key,
        min(refreshes.observed_at) as first_seen_at,
        max(refreshes.observed_at) as last_seen_at,
        min(refreshes.refresh_number) as first_seen_refresh,
        count(*) as refreshes_seen
    from refreshes
    inner join companies on companies.job_id = refreshes.job_id
    group by refreshes.entry_id, companies.company_key

)

select
    {{ dbt.concat(["refreshes.entry_id", "'|'", "companies.company_key"]) }}
        as current_company_id,
    refreshes.entry_id,
    refreshes.job_type,
    refreshes.query,
    refreshes.job_id,
    refreshes.refresh_number,
    companies.company_key,
    companies.rank,
    companies.name,
    companies.domain,
    companies.linkedin_url,
    companies.headquarters,
    companies.hq_country,
    companies.employee_count,
    companies.company_size,
    companies.funding_stage,
    companies.industries,
    companies.match_reason,
    sightings.first_seen_at,
    sightings.last_seen_at,
    sightings.first_seen_refresh,
    sightings.refreshes_seen
from refreshes
inner join companies on companies.job_id = refreshes.job_id
inner join sightings
    on sightings.entry_id = refreshes.entry_id
    and sightings.company_key = companies.company_key
where refreshes.is_latest
