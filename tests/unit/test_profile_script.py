"""scripts/profile_hot_path.py: reading py-spy's raw output (the pure part; sampling needs py-spy)."""

import importlib.util
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))  # the script imports bench_common from beside it
_spec = importlib.util.spec_from_file_location("profile_hot_path", SCRIPTS / "profile_hot_path.py")
profile = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(profile)


def test_python_and_native_frames_are_named_by_file_and_function_without_lines():
    assert profile.frame_name("execute (geomys/engine.py:143)") == "engine.py:execute"
    assert profile.frame_name("sem_post (libc.so.6)") == "libc.so.6:sem_post"


def test_samples_add_up_per_function_as_own_time_and_as_time_with_callees(tmp_path):
    raw = tmp_path / "raw.txt"
    raw.write_text("run (a.py:1);work (b.py:5) 3\n"
                   "run (a.py:1);work (b.py:6);sem_post (libc.so.6) 2\n"
                   "run (a.py:2) 1\n")
    total, own, inclusive = profile.aggregate(raw)
    assert total == 6
    assert own == {"b.py:work": 3, "libc.so.6:sem_post": 2, "a.py:run": 1}
    assert inclusive["a.py:run"] == 6 and inclusive["b.py:work"] == 5
