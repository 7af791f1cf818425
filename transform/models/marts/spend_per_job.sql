-- Credits of every job the tap followed, whatever its outcome (failed and cancelled
-- jobs can bill too). A job whose manifest gave no credit figure has credits_consumed
-- null: unknown, not zero.
select
    job_id,
    entry_id,
    job_type,
    status,
    origin,
    query,
    submitted_at,
    terminal_at,
    cast({{ dbt.date_trunc('month', 'observed_at') }} as date) as spend_month,
    credits_consumed,
    credits_consumed is not null as credits_known
from {{ ref('stg_openfunnel__jobs') }}
