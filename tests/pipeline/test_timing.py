"""pipeline.timing: the steps of a task, nested, summed and in the order they started."""
import threading
import time

from pipeline import timing


def test_steps_nest_sum_and_are_taken_once():
    timing.take()
    with timing.step("outer"):
        with timing.step("inner"):
            time.sleep(0.02)
        with timing.step("inner"):
            time.sleep(0.01)
    with timing.step("after"):
        pass
    steps = timing.take(clear=False)
    assert list(steps) == ["outer", "outer / inner", "after"]
    assert steps["outer / inner"] >= 0.03 - 1e-3
    assert steps["outer"] >= steps["outer / inner"]
    assert timing.take() == steps and timing.take() == {}


def test_a_failing_step_is_still_timed_and_leaves_the_nesting_clean():
    timing.take()
    try:
        with timing.step("fails"):
            raise ValueError("x")
    except ValueError:
        pass
    with timing.step("next"):
        pass
    assert list(timing.take()) == ["fails", "next"]   # not "fails / next"


def test_threads_have_their_own_nesting():
    timing.take()
    done = threading.Event()

    def other():
        with timing.step("thread"):
            done.wait(5)

    with timing.step("main"):
        t = threading.Thread(target=other)
        t.start()
        with timing.step("child"):
            pass
        done.set()
        t.join()
    assert set(timing.take()) == {"main", "main / child", "thread"}


def test_hand_on_pushes_a_tasks_steps_once_and_nothing_when_none():
    pushed = []

    class TaskInstance:   # the one method hand_on uses (the DAG tests run it on Airflow's own)
        def xcom_push(self, key, value):
            pushed.append((key, value))

    timing.take()
    assert timing.hand_on(TaskInstance()) == {} and pushed == []
    with timing.step("train"):
        pass
    steps = timing.hand_on(TaskInstance())
    assert list(steps) == ["train"] and pushed == [("steps", steps)] and timing.take() == {}
