from __future__ import annotations

from cluster.doctor import run_doctor


def test_doctor_renders_identically_on_every_ray_node(ray_cluster, capsys):
    assert run_doctor() == 0
    out = capsys.readouterr().out
    assert "tiny SD render matches the driver" in out
    assert "doctor: all checks passed" in out
