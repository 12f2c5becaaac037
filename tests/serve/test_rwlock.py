"""The readers-writer lock: readers share, a writer is alone, a waiting writer is not starved."""

from __future__ import annotations

import threading
import time

from hirex.serve.rwlock import ReadWriteLock


def test_readers_share_and_a_writer_waits_for_them_and_runs_alone():
    lock = ReadWriteLock()
    inside, overlap, log = [0], [0], []
    guard = threading.Lock()

    def reader(i):
        with lock.read():
            with guard:
                inside[0] += 1
                overlap[0] = max(overlap[0], inside[0])
            time.sleep(0.05)
            with guard:
                inside[0] -= 1

    def writer():
        with lock.write():
            log.append(("writer", inside[0]))

    readers = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
    for t in readers:
        t.start()
    time.sleep(0.01)
    w = threading.Thread(target=writer)
    w.start()
    for t in [*readers, w]:
        t.join(5)
    assert overlap[0] >= 2  # readers really ran together
    assert log == [("writer", 0)]  # the writer ran with no reader inside


def test_a_waiting_writer_gets_in_under_a_stream_of_readers():
    lock = ReadWriteLock()
    stop, wrote = threading.Event(), threading.Event()

    def reader():
        while not stop.is_set():
            with lock.read():
                time.sleep(0.002)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.02)

    def writer():
        with lock.write():
            wrote.set()

    threading.Thread(target=writer).start()
    assert wrote.wait(2.0)
    stop.set()
    for t in threads:
        t.join(5)
