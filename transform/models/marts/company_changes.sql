-- What each refresh changed: for every complete job of an entry that has a complete job
-- before it, the companies it added (absent from the previous job) and dropped (listed by
-- the previous job, absent from this one). Companies match by domain, else by name.
with refreshes as (

    select * from {{ ref('entry_refreshes') }}
    where previous_job_id is not null

),

companies as (

    select * from {{ ref('int_openfunnel__job_companies') }}

),

added as (

    select
        refreshes.entry_id,
        refreshes.job_type,
        refreshes.job_id,
        refreshes.previous_job_id,
        refreshes.refresh_number,
        refreshes.observed_at as changed_at,
        'added' as change,
        current_rows.company_key,
        current_rows.rank,
        current_rows.name,
        current_rows.domain
    from refreshes
    inner join companies as current_rows on current_rows.job_id = refreshes.job_id
    left join companies as previous_rows
        on previous_rows.job_id = refreshes.previous_job_id
        and previous_rows.company_key = current_rows.company_key
    where previous_rows.company_key is null

),

dropped as (

    select
        refreshes.entry_id,
        refreshes.job_type,
        refreshes.job_id,
        refreshes.previous_job_id,
        refreshes.refresh_number,
        refreshes.observed_at as changed_at,
        'dropped' as change,
        previous_rows.company_key,
        previous_rows.rank,
        previous_rows.name,
        previous_rows.domain
    from refreshes
    inner join companies as previous_rows on previous_rows.job_id = refreshes.previous_job_id
    left join companies as current_rows
        on current_rows.job_id = refreshes.job_id
        and current_rows.company_key = previous_rows.company_key
    where current_rows.company_key is null

),

changes as (

    select * from added
    union all
    select * from dropped

)

select
    {{ dbt.concat(["job_id", "'|'", "change", "'|'", "company_key"]) }} as change_id,
    entry_id,
    job_type,
    job_id,
    previous_job_id,
    refresh_number,
    changed_at,
    change,
    company_key,
    rank,
    name,
    domain
from changes
