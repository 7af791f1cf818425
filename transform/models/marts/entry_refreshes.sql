-- The completed jobs of each entry in order: each refresh with the one before it.
-- A job counts once OpenFunnel reports it completed, the tap had no trouble with it and
-- every row its manifest announces has been loaded (a job still being read does not
-- replace the last complete one).
with jobs as (

    select * from {{ ref('stg_openfunnel__jobs') }}

),

loaded as (

    select job_id, count(*) as rows_loaded
    from (
        select job_id from {{ ref('stg_openfunnel__tam_companies') }}
        union all
        select job_id from {{ ref('stg_openfunnel__lookalike_companies') }}
    ) as company_rows
    group by job_id

),

complete as (

    select
        jobs.entry_id,
        jobs.entry_kind,
        jobs.job_id,
        jobs.job_type,
        jobs.query,
        jobs.submitted_at,
        jobs.terminal_at,
        jobs.observed_at,
        jobs.manifest_rows,
        coalesce(loaded.rows_loaded, 0) as rows_loaded,
        jobs.credits_consumed
    from jobs
    left join loaded on loaded.job_id = jobs.job_id
    where jobs.status = 'completed'
        and jobs.tap_error is null
        and coalesce(loaded.rows_loaded, 0) >= coalesce(jobs.manifest_rows, 0)

),

ordered as (

    select
        complete.*,
        row_number() over (
            partition by entry_id order by observed_at, job_id
        ) as refresh_number,
        lag(job_id) over (partition by entry_id order by observed_at, job_id)
            as previous_job_id,
        lead(job_id) over (partition by entry_id order by observed_at, job_id)
            as next_job_id
    from complete

)

select
    entry_id,
    entry_kind,
    job_id,
    job_type,
    query,
    submitted_at,
    terminal_at,
    observed_at,
    manifest_rows,
    rows_loaded,
    credits_consumed,
    refresh_number,
    previous_job_id,
    next_job_id is null as is_latest
from ordered
