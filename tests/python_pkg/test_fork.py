"""fork: a child that uses its parent's objects gets a clear error; its own work."""

import os

import pytest

import weir
from conftest import samples


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_gets_a_clear_error_and_can_start_its_own_instance(instance, tmp_path):
    c = weir.Counter("forked", "Forked.", instance=instance)
    c.inc(2)
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            for use in (c.inc, instance.flush, instance.generate_latest):
                try:
                    use()
                    code |= 1
                except RuntimeError as e:
                    if "os.fork()" not in str(e):
                        code |= 2
            mine = weir.Instance(f'data_dir = "{tmp_path}/child"\n')
            own = weir.Counter("child_made", "Child.", instance=mine)
            own.inc(3)
            if samples(mine.generate_latest()) != {("child_made_total", frozenset()): 3}:
                code |= 4
            mine.close(0)
        except BaseException:
            code |= 8
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent is unaffected.
    c.inc(1)
    assert samples(instance.generate_latest())[("forked_total", frozenset())] == 3
