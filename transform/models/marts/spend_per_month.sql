-- Credits per calendar month (of when each job was submitted, else seen done) and job
-- family (spend_month null: a job with neither date, e.g. one the tap gave up waiting for).
-- credits_consumed sums the known figures; jobs_credits_unknown counts the rest.
select
    {{ dbt.concat([
        "coalesce(cast(spend_month as " ~ dbt.type_string() ~ "), 'unknown')", "'|'", "job_type"
    ]) }} as spend_month_id,
    spend_month,
    job_type,
    count(*) as jobs,
    sum(case when credits_known then 0 else 1 end) as jobs_credits_unknown,
    sum(credits_consumed) as credits_consumed
from {{ ref('spend_per_job') }}
group by spend_month, job_type
