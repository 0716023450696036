"""EDFQueue against a sorted-list model under random push / pop / remove / re-push / expire
sequences (Hypothesis). Ids are drawn from a small pool so removed ids come back often."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tidal.core.request import Request
from tidal.dataplane.edf import EDFQueue

OPS = st.lists(
    st.tuples(
        st.sampled_from(["push", "pop", "remove", "expire", "peek", "batch"]),
        st.integers(0, 7),
        st.integers(0, 5),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(OPS)
def test_edf_queue_matches_a_sorted_model(ops: list[tuple[str, int, int]]) -> None:
    q: EDFQueue[Request] = EDFQueue()
    model: dict[int, float] = {}  # id -> deadline of the queued request
    for op, rid, d in ops:
        if op == "push":
            if rid in model:
                continue
            q.push(Request(rid, 0.0, float(d)))
            model[rid] = float(d)
        elif op == "pop":
            if not model:
                assert q.peek() is None
                continue
            want = min(model.items(), key=lambda kv: (kv[1], kv[0]))
            got = q.pop()
            assert (got.id, got.deadline) == want
            del model[want[0]]
        elif op == "remove":
            assert bool(q.remove(rid)) == (rid in model)
            model.pop(rid, None)
        elif op == "expire":
            out = q.expire(float(d))
            want_ids = sorted((dl, i) for i, dl in model.items() if dl <= d)
            assert [(r.deadline, r.id) for r in out] == want_ids
            for _, i in want_ids:
                del model[i]
        elif op == "batch":
            out = q.pop_batch(d)
            want_b = sorted((dl, i) for i, dl in model.items())[:d]
            assert [(r.deadline, r.id) for r in out] == want_b
            for _, i in want_b:
                del model[i]
        else:
            head = q.peek()
            if model:
                assert head is not None
                assert (head.deadline, head.id) == min((dl, i) for i, dl in model.items())
            else:
                assert head is None
        assert len(q) == len(model)
        assert list(q) == sorted(model.values())
        assert all((i in q) for i in model)
