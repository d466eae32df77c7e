"""Progress: the one throttle between the library's long loops and the on_progress callback."""
from textstream.progress import Progress


def test_reports_the_start_every_step_and_the_end_once():
    seen = []
    p = Progress(lambda *a: seen.append(a), "encode", 100)
    p.every = 10
    for done in range(1, 101):
        p.update(done)
    p.update(100)  # the end again: not reported twice
    p.finish()
    assert seen == [("encode", d, 100) for d in range(0, 101, 10)]


def test_throttle_counts_from_the_last_report():
    seen = []
    p = Progress(lambda label, done, total: seen.append(done), "count", None)
    p.every = 10
    for done in (3, 9, 12, 15, 21, 40, 41):
        p.update(done)
    assert seen == [0, 12, 40]
    p.finish()  # a total never reached (a download shorter than announced): the last value still comes
    p.finish()
    assert seen == [0, 12, 40, 41]


def test_default_step_is_large_and_none_reports_nothing():
    seen = []
    p = Progress(lambda *a: seen.append(a), "hash", 1 << 30)
    for done in range(0, 1 << 22, 1 << 16):
        p.update(done)
    assert seen == [("hash", 0, 1 << 30)]  # nothing until 4 MiB more
    quiet = Progress(None, "x", 10)
    quiet.update(10)
    quiet.finish()
    assert quiet.done == 10
