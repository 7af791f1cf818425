"""The next_cursor paginator and the in-order prefetcher: in-memory pages, odd cursors in a run."""

from __future__ import annotations

import json
import signal
import threading

import pytest
from hostile import (
    BAD,
    GOOD,
    HostileAPI,
    HostileJob,
    answer_page,
    assert_clean,
    bad_records,
    run_against,
)
from support import API_KEY, base_config, spec

from tap_openfunnel.exceptions import PageSequenceError
from tap_openfunnel.pagination import Page, PageReader, page_index, page_name


def book(pages: int, rows_per_page: int = 3) -> dict[str | None, Page]:
    """A well-behaved job: page_0000..page_{n-1}, each naming its successor."""
    out: dict[str | None, Page] = {}
    for index in range(pages):
        out[page_name(index)] = Page(
            name=page_name(index),
            rows=[{"n": index * rows_per_page + i} for i in range(rows_per_page)],
            next_cursor=page_name(index + 1) if index + 1 < pages else None,
        )
    out[None] = out[page_name(0)]
    return out


class Fetcher:
    def __init__(self, pages: dict[str | None, Page]) -> None:
        self.pages = pages
        self.calls: list[str | None] = []
        self.lock = threading.Lock()

    def __call__(self, cursor: str | None) -> Page:
        with self.lock:
            self.calls.append(cursor)
        return self.pages[cursor]


def encode(page: Page) -> bytes:
    return json.dumps(
        {"page": page.name, "rows": page.rows, "next_cursor": page.next_cursor}
    ).encode()


DECODED_IN: set[str] = set()


def reader_for(job_id, fetch, concurrency) -> PageReader:
    """A reader over a fetch that returns pages: its workers get them as bytes, as from
    the API, and the reading thread decodes them."""

    def body(cursor):
        return encode(fetch(cursor))

    def read(cursor, raw):
        DECODED_IN.add(threading.current_thread().name)
        return Page.from_response(json.loads(raw if raw is not None else body(cursor)))

    return PageReader(job_id, body, read, concurrency=concurrency)


def numbers(pages) -> list[int]:
    return [row["n"] for page in pages for row in page.rows]


@pytest.mark.parametrize("concurrency", [1, 2, 4, 8])
@pytest.mark.parametrize("start", [None, "page_0003"])
def test_reads_every_page_in_order(concurrency, start):
    fetch = Fetcher(book(10))
    reader = reader_for("job", fetch, concurrency)
    got = list(reader.pages(start, total_pages=10))
    first = page_index(start) or 0
    assert numbers(got) == list(range(first * 3, 30))
    assert [page.name for page in got] == [page_name(i) for i in range(first, 10)]
    assert len(fetch.calls) == 10 - first


def test_first_page_at_hand_is_not_fetched_again():
    pages = book(3)
    fetch = Fetcher(pages)
    got = list(reader_for("job", fetch, 4).pages(None, first=pages[None], total_pages=3))
    assert numbers(got) == list(range(9))
    assert None not in fetch.calls
    assert "page_0000" not in fetch.calls


def test_sequential_follows_cursor_without_manifest():
    fetch = Fetcher(book(4))
    got = list(reader_for("job", fetch, 8).pages(None, total_pages=None))
    assert numbers(got) == list(range(12))


def test_opaque_cursors_fall_back_to_sequential(caplog):
    pages = {
        None: Page("page_0000", [{"n": 0}], "tok-a"),
        "page_0000": Page("page_0000", [{"n": 0}], "tok-a"),
        "tok-a": Page("page_0001", [{"n": 1}], "tok-b"),
        "tok-b": Page("page_0002", [{"n": 2}], None),
        "page_0001": Page("page_0001", [{"n": 1}], "tok-b"),
        "page_0002": Page("page_0002", [{"n": 2}], None),
    }
    fetch = Fetcher(pages)
    reader = reader_for("job", fetch, 4)
    assert numbers(reader.pages(None, total_pages=3)) == [0, 1, 2]
    assert "one page at a time" in caplog.text
    assert "tok-b" in fetch.calls


def test_wrong_page_is_not_emitted_by_the_prefetcher(caplog):
    pages = book(4)
    # Asking for page_0002 returns page_0003: the prefetcher must notice, not emit it
    # as page_0002, and go on by next_cursor.
    pages["page_0002"] = Page("page_0003", pages["page_0003"].rows, None)
    reader = reader_for("job", Fetcher(pages), 4)
    got = list(reader.pages(None, total_pages=4))
    assert "asked for page_0002 but the API answered 'page_0003'" in caplog.text
    # Sequential mode trusts the API, as any cursor-following reader must; the prefetcher
    # never labelled the wrong page as page_0002.
    assert [page.name for page in got][:2] == ["page_0000", "page_0001"]


def test_more_pages_than_the_manifest_says_are_followed():
    fetch = Fetcher(book(5))
    assert numbers(reader_for("job", fetch, 4).pages(None, total_pages=3)) == list(range(15))


def test_empty_page_with_cursor_is_followed():
    pages = book(3)
    pages["page_0001"] = Page("page_0001", [], "page_0002")
    got = list(reader_for("job", Fetcher(pages), 1).pages(None))
    assert numbers(got) == [0, 1, 2, 6, 7, 8]


@pytest.mark.parametrize("concurrency", [1, 4])
def test_repeating_cursor_stops_with_a_clear_error(concurrency):
    pages = book(4)
    pages["page_0001"] = Page("page_0001", [{"n": 99}], "page_0001")
    reader = reader_for("job-x", Fetcher(pages), concurrency)
    seen: list[int] = []

    def read_all() -> None:
        for page in reader.pages(None, total_pages=4):
            seen.extend(row["n"] for row in page.rows)

    with pytest.raises(PageSequenceError, match="job-x") as info:
        read_all()
    assert info.value.job_id == "job-x"
    # The page that points back is handed over with the error, not as a page to
    # follow: its rows may go out, but no state may move past it.
    assert seen == [0, 1, 2]
    assert [row["n"] for row in info.value.page.rows] == [99]


def test_cycle_of_two_is_caught():
    pages = book(3)
    pages["page_0002"] = Page("page_0002", [{"n": 7}], "page_0001")
    with pytest.raises(PageSequenceError):
        list(reader_for("job", Fetcher(pages), 1).pages(None))


def test_prefetch_window_is_bounded():
    """At most `concurrency` requests are in flight."""
    in_flight = 0
    peak = 0
    lock = threading.Lock()
    barrier = threading.Event()
    pages = book(40)

    def fetch(cursor):
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        barrier.wait(0.001)
        with lock:
            in_flight -= 1
        return pages[cursor]

    got = list(reader_for("job", fetch, 3).pages(None, total_pages=40))
    assert len(got) == 40
    assert 1 <= peak <= 3


def test_workers_fetch_ahead_of_the_reader_up_to_twice_the_concurrency():
    """A worker starts the next request when its answer is in, not when the reading
    thread gets to that page; pages held undecoded stay bounded by 2 x concurrency."""
    concurrency = 3
    pages = book(40)
    fetched = Fetcher(pages)
    ahead = threading.Event()

    def fetch(cursor):
        page = fetched(cursor)
        if len(fetched.calls) >= 2 * concurrency:
            ahead.set()
        return page

    reader = reader_for("job", fetch, concurrency).pages(None, total_pages=40)
    first = next(reader)
    # The reader holds page 0 and asks for nothing more: the workers go on alone, to
    # six pages (requests in flight plus answers waiting), no further.
    assert ahead.wait(5)
    assert len(fetched.calls) == 2 * concurrency
    consumed = 1
    most_ahead = 0
    for _page in reader:
        consumed += 1
        with fetched.lock:
            most_ahead = max(most_ahead, len(fetched.calls) - consumed)
    assert first.name == "page_0000"
    assert consumed == 40
    assert fetched.calls == [page_name(index) for index in range(40)]
    assert most_ahead <= 2 * concurrency


@pytest.mark.parametrize("concurrency", [1, 4])
@pytest.mark.parametrize(
    "back_to",
    [
        pytest.param("page_0000", id="to-the-first-page"),
        pytest.param("page_0001", id="to-the-middle"),
    ],
)
def test_a_cursor_back_to_any_page_read_ends_the_walk(concurrency, back_to):
    pages = book(3)
    pages["page_0002"] = Page("page_0002", [{"n": 7}], back_to)
    seen: list[int] = []

    def read_all() -> None:
        for page in reader_for("job", Fetcher(pages), concurrency).pages(None, total_pages=3):
            seen.extend(row["n"] for row in page.rows)

    with pytest.raises(PageSequenceError, match="back to") as info:
        read_all()
    assert seen == [0, 1, 2, 3, 4, 5]
    assert info.value.page.name == "page_0002"


def test_the_first_page_pointing_at_itself_is_caught():
    pages = {None: Page("page_0000", [{"n": 0}], "page_0000")}
    with pytest.raises(PageSequenceError):
        list(reader_for("job", Fetcher(pages), 1).pages(None))


def test_an_old_page_under_a_fresh_cursor_is_caught():
    pages = book(2)
    pages["page_0001"] = Page("page_0001", [{"n": 3}], "fresh")
    pages["fresh"] = Page("page_0000", [{"n": 0}], None)  # page 0 again
    with pytest.raises(PageSequenceError, match="already read") as info:
        list(reader_for("job", Fetcher(pages), 1).pages(None))
    assert info.value.page is None  # its rows are a repeat: none may go out


class Endless:
    """Fresh cursors for ever: page_0000, page_0001, ... (rows or not)."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.calls = 0

    def __call__(self, cursor: str | None) -> Page:
        self.calls += 1
        index = page_index(cursor) or 0
        assert self.calls < 20_000, "the walk did not stop"
        return Page(page_name(index), [{"n": index}] * self.rows, page_name(index + 1))


@pytest.mark.parametrize("concurrency", [1, 4])
def test_pages_past_the_manifest_stop_within_the_margin(concurrency):
    fetch = Endless(rows=1)
    with pytest.raises(PageSequenceError, match="beyond what its manifest allows"):
        list(reader_for("job", fetch, concurrency).pages(None, total_pages=3))
    assert fetch.calls <= 3 + 5 + concurrency


def test_a_run_of_empty_pages_stops():
    fetch = Endless(rows=0)
    with pytest.raises(PageSequenceError, match="3 empty pages in a row"):
        list(reader_for("job", fetch, 1).pages(None))
    assert fetch.calls == 3


def test_without_a_manifest_the_walk_is_still_bounded():
    fetch = Endless(rows=1)
    with pytest.raises(PageSequenceError, match="without a manifest"):
        list(reader_for("job", fetch, 1).pages(None))
    assert fetch.calls == 10_000


@pytest.mark.parametrize("concurrency", [1, 4])
def test_pages_are_decoded_in_the_reading_thread_only(concurrency):
    """Prefetch threads move bytes; objects are built where the records are written."""
    DECODED_IN.clear()
    got = list(reader_for("job", Fetcher(book(12)), concurrency).pages(None, total_pages=12))
    assert numbers(got) == list(range(36))
    assert threading.current_thread().name in DECODED_IN
    assert len(DECODED_IN) == 1


def test_prefetch_threads_leave_termination_signals_to_the_main_thread():
    """The main thread holds SIGTERM while it writes output; workers must not take it."""
    masks: list[set[int]] = []
    pages = book(6)

    def fetch(cursor):
        masks.append(set(signal.pthread_sigmask(signal.SIG_BLOCK, [])))
        return pages[cursor]

    got = list(reader_for("job", fetch, 3).pages(None, total_pages=6))
    assert len(got) == 6
    assert masks
    assert all({signal.SIGINT, signal.SIGTERM} <= mask for mask in masks)
    assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


@pytest.mark.parametrize(
    ("rows", "kept", "skipped"),
    [
        pytest.param([{"a": 1}, {"b": 2}], [{"a": 1}, {"b": 2}], 0, id="objects"),
        pytest.param([{"a": 1}, 3, None, "x", [], {"b": 2}], [{"a": 1}, {"b": 2}], 4, id="mixed"),
        pytest.param([3, None], [], 2, id="no-object"),
        pytest.param([], [], 0, id="empty"),
        pytest.param(None, [], 0, id="null"),
    ],
)
def test_rows_that_are_not_objects_are_skipped_and_counted(rows, kept, skipped, caplog):
    page = Page.from_response({"rows": rows, "page": "page_0002"})
    assert page.rows == kept
    warned = [record.getMessage() for record in caplog.records if "not JSON objects" in record.msg]
    expected = (
        f"Page page_0002: {skipped} of its rows are not JSON objects and cannot become "
        "records; they were skipped (and will show in the row count check)."
    )
    assert warned == ([expected] if skipped else [])


@pytest.mark.parametrize("concurrency", [1, 4])
def test_empty_page_with_a_cursor_is_followed(server, run_tap, concurrency):
    job = server.add_job(spec(rows=450, quirks={"empty_page_with_cursor"}))
    run = run_tap(base_config(server, tam_job_ids=[job], page_concurrency=concurrency))
    assert run.returncode == 0, run.stderr
    assert sorted(r["rank"] for r in run.records("tam_companies")) == list(range(1, 451))


@pytest.mark.parametrize("concurrency", [1, 4])
def test_repeating_cursor_fails_the_job_after_delivering_what_came_before(
    server, run_tap, concurrency
):
    job = server.add_job(spec(rows=450, quirks={"repeat_cursor"}))
    run = run_tap(base_config(server, tam_job_ids=[job], page_concurrency=concurrency))
    assert run.returncode == 1
    assert job in run.stderr
    assert "back to 'page_0001'" in run.stderr
    assert sorted(r["rank"] for r in run.records("tam_companies")) == list(range(1, 201))
    # State stays before the page that points back: a rerun sends it again with the
    # same ranks, never under new ones.
    (partition,) = run.last_state["bookmarks"]["tam_companies"]["partitions"]
    assert (partition["next_cursor"], partition["rows_read"]) == ("page_0001", 100)
    again = run_tap(base_config(server, tam_job_ids=[job]), state=run.last_state)
    assert sorted(r["rank"] for r in again.records("tam_companies")) == list(range(101, 201))
    resumed = f"Job {job}: resuming at page 'page_0001' (the cursor kept in state), after 100"
    assert resumed in again.stderr
    assert "resuming at page" not in run.stderr  # the first run started at the start


@pytest.mark.parametrize(("strict", "code"), [(False, 0), (True, 1)])
def test_manifest_mismatch_warns_or_fails(server, run_tap, strict, code):
    job = server.add_job(spec(rows=300, quirks={"manifest_mismatch"}))
    run = run_tap(base_config(server, tam_job_ids=[job], strict_row_count=strict))
    assert run.returncode == code
    assert "read 300 rows but the manifest's unique_count says 305" in run.stderr
    assert len(run.records("tam_companies")) == 300


def test_opaque_cursors_are_followed(server, run_tap):
    job = server.add_job(spec(rows=530, quirks={"opaque_cursor"}))
    run = run_tap(base_config(server, tam_job_ids=[job], page_concurrency=8))
    assert run.returncode == 0, run.stderr
    assert sorted(r["rank"] for r in run.records("tam_companies")) == list(range(1, 531))


def test_wrong_page_is_never_emitted_under_the_wrong_name(server, run_tap):
    job = server.add_job(spec(rows=600, quirks={"wrong_page"}))
    run = run_tap(base_config(server, tam_job_ids=[job], page_concurrency=4))
    assert run.returncode == 0, run.stderr
    rows = run.records("tam_companies")
    assert "asked for page_0002" in run.stderr
    assert all(r["page"] != "page_0002" for r in rows)
    assert "manifest" in run.stderr  # the shortfall is reported, not silent


PAGE_WALK = [
    pytest.param("cycle_to_first", 300, "back to 'page_0000'", id="cursor-cycles-to-first-page"),
    pytest.param("self_loop_first", 100, "back to 'page_0000'", id="first-page-points-at-itself"),
    pytest.param("old_page_fresh_cursor", 300, "already read", id="old-page-under-new-cursor"),
    # The manifest's 3 pages and the margin of 5: 800 fresh rows, then the job fails.
    pytest.param("endless_fresh", 800, "beyond what its manifest allows", id="pages-past-manifest"),
    pytest.param("endless_empty", 100, "empty pages in a row", id="empty-pages-for-ever"),
]


@pytest.mark.parametrize(("pathology", "delivered", "needle"), PAGE_WALK)
@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_page_walk_that_would_not_end_fails_its_job_only(
    tmp_path, pathology, delivered, needle, concurrency
):
    jobs = {GOOD: HostileJob(), BAD: HostileJob(rows=300, pathology=pathology)}
    with HostileAPI(jobs, api_key=API_KEY) as api:
        run = run_against(api, tmp_path, page_concurrency=concurrency)
        bad_pages = len(api.pages_served(BAD))
    assert run.returncode == 1
    assert needle in run.stderr
    assert BAD in run.stderr.splitlines()[-1]
    assert_clean(run)
    bad = [r for r in run.records("tam_companies") if r["job_id"] == BAD]
    assert len(bad) == delivered
    assert bad_pages <= 12  # bounded: the manifest's 3 pages, the margin, the window
    # State never claims more than was delivered, nor a cursor that points back.
    partitions = run.last_state["bookmarks"]["tam_companies"]["partitions"]
    (bad_state,) = [p for p in partitions if p["context"]["job_id"] == BAD]
    assert bad_state.get("rows_read", 0) <= delivered
    assert not bad_state.get("done")


def test_rerun_after_a_cycle_adds_no_row_under_a_new_rank(tmp_path):
    jobs = {GOOD: HostileJob(), BAD: HostileJob(rows=300, pathology="cycle_to_first")}
    with HostileAPI(jobs, api_key=API_KEY) as api:
        first = run_against(api, tmp_path)
        second = run_against(api, tmp_path, state=first.last_state)
    seen: dict[int, str] = {}
    ranks_of: dict[str, int] = {}
    for record in first.records("tam_companies") + second.records("tam_companies"):
        if record["job_id"] == BAD:
            assert seen.setdefault(record["rank"], record["domain"]) == record["domain"]
            assert ranks_of.setdefault(record["domain"], record["rank"]) == record["rank"]
    assert max(seen) == 300
    assert second.returncode == 1
    assert_clean(first)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        pytest.param({"next_cursor": "page_" + "9" * 5000}, "more than the 256", id="cursor"),
        pytest.param({"page": "page_0001" + "x" * 300}, "page name of 309", id="page-name"),
        pytest.param(
            {"rows": [{"name": f"C{i}", "domain": f"c{i}.x"} for i in range(10_001)]},
            "holds 10001 rows",
            id="rows",
        ),
    ],
)
@pytest.mark.parametrize("index", [0, 1])  # the first page comes with the poll
def test_a_page_beyond_a_page_bound_fails_its_job_only(tmp_path, change, needle, index):
    with HostileAPI({GOOD: HostileJob(), BAD: HostileJob(rows=300)}, api_key=API_KEY) as api:
        answer_page(api, index, lambda status, headers, body: (status, headers, {**body, **change}))
        run = run_against(api, tmp_path, page_concurrency=1)
    assert run.returncode == 1, run.stderr[-3000:]
    assert needle in run.stderr
    assert BAD in run.stderr.splitlines()[-1]
    assert_clean(run)
    assert len(bad_records(run)) == 100 * index
    assert max(len(line) for line in run.stderr.splitlines()) < 2000
