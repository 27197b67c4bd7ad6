from lcenet.records import complete


def old_record(curve, stopped_early=False, stopped_by_time=False, max_steps=None, steps=100):
    return {"stopped_early": stopped_early, "stopped_by_time": stopped_by_time, "steps": steps,
            "config": {"train": {"max_steps": max_steps}}, "dev_curve": [{"nDCG@5": v} for v in curve]}


def test_older_records_get_stop_reason_and_convergence_by_the_trainers_rule():
    assert complete(old_record([0.1, 0.2, 0.25], stopped_early=True))["stop_reason"] == "patience"
    still_improving = complete(old_record([0.1, 0.2, 0.25]))
    assert still_improving["stop_reason"] == "epochs" and still_improving["converged"] is False
    assert still_improving["stopping_derived"] is True
    flat = complete(old_record([0.1, 0.3, 0.3004, 0.3001], stopped_by_time=True))
    assert flat["stop_reason"] == "max_seconds" and flat["converged"] is True
    assert complete(old_record([0.1], max_steps=100))["stop_reason"] == "max_steps"


def test_recorded_fields_are_kept_and_curveless_records_stay_unknown():
    recorded = {**old_record([0.1, 0.2, 0.3]), "stop_reason": "epochs", "converged": True}
    assert complete(recorded) is recorded
    assert complete(old_record([])).get("converged") is None
