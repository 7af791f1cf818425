-- Credits per entry (every job of one tam_builds/lookalike_searches entry, or one job id
-- from config). credits_consumed sums the known figures; jobs_credits_unknown says how
-- many jobs have none, so a partial sum never passes for the whole.
select
    entry_id,
    min(job_type) as job_type,
    max(query) as query,
    count(*) as jobs,
    sum(case when credits_known then 0 else 1 end) as jobs_credits_unknown,
    sum(credits_consumed) as credits_consumed,
    min(submitted_at) as first_submitted_at,
    max(submitted_at) as last_submitted_at
from {{ ref('spend_per_job') }}
group by entry_id
