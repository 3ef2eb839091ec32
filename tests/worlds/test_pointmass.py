"""PointMass: physics, termination, concepts against hand-computed values and a ray-marching
reference, vectorised == single-env, the oracle's success rate, and seeding."""

from __future__ import annotations

import math

import numpy as np
import pytest

from worlds.pointmass import FAMILIES, MAX_HAZARDS, PointMass, PointMassParams, PointMassState


def _state(pos, vel=(0.0, 0.0), goal=(-0.9, -0.9), centers=(), radii=(), t=0) -> PointMassState:
    """A one-env state; ``centers``/``radii`` list the hazards (may be empty)."""
    k = len(radii)
    return PointMassState(
        pos=np.array([pos], float), vel=np.array([vel], float), goal=np.array([goal], float),
        hazard_center=np.array(centers, float).reshape(1, k, 2), hazard_radius=np.array(radii, float).reshape(1, k),
        t=np.array([t]), family=np.array([0]),
    )


def _world(**params) -> PointMass:
    return PointMass(1, PointMassParams(**params), seed=0)


def test_force_moves_the_mass_the_way_it_pushes():
    w = _world(dt=0.1, mass=2.0, damping=0.5, max_force=1.0)
    w.set_state(_state(pos=(0.0, 0.0), vel=(0.2, 0.0)))
    w.step(np.array([[1.0, -0.5]], np.float32))
    # vel = v + dt * (F/m - damping v) = (0.2 + 0.1 * (0.5 - 0.1), 0.1 * (-0.25)); pos = dt * vel
    np.testing.assert_allclose(w.vel[0], [0.24, -0.025])
    np.testing.assert_allclose(w.pos[0], [0.024, -0.0025])
    np.testing.assert_allclose(w._obs()[0, 2:4], [0.24, -0.025], rtol=1e-6)  # velocity slot of the obs


def test_speed_is_capped():
    w = _world(damping=0.0, max_speed=0.5)
    w.set_state(_state(pos=(-0.9, 0.0)))
    speeds = []
    for _ in range(12):
        w.step(np.array([[1.0, 1.0]], np.float32))
        speeds.append(float(w.concepts()["speed"][0]))
    assert max(speeds) <= 0.5 + 1e-6
    assert speeds[-1] == pytest.approx(0.5, abs=1e-6)
    assert math.isclose(w.vel[0, 0], w.vel[0, 1])  # the cap keeps the direction


def test_walls_clamp_position_and_stop_the_normal_velocity():
    w = _world()
    w.set_state(_state(pos=(0.99, 0.0), vel=(0.5, 0.1)))
    w.step(np.array([[1.0, 0.0]], np.float32))
    assert w.pos[0, 0] == 1.0 and w.vel[0, 0] == 0.0
    assert w.vel[0, 1] > 0 and w.pos[0, 1] > 0  # the tangential motion goes on


def test_entering_a_hazard_is_a_violation_that_ends_the_episode():
    w = _world()
    w.set_state(_state(pos=(0.06, 0.0), vel=(0.5, 0.0), centers=[(0.3, 0.0)], radii=[0.2]))
    assert w.concepts()["in_hazard"][0] == 0
    r = w.step(np.array([[1.0, 0.0]], np.float32))  # pos.x -> 0.11, inside the disc [0.1, 0.5]
    assert r.violation[0] and r.terminated[0] and not r.success[0] and not r.truncated[0]
    assert r.reward[0] == -1.0
    assert w.concepts()["in_hazard"][0] == 1


def test_reaching_the_goal_is_a_success():
    w = _world(goal_radius=0.1)
    w.set_state(_state(pos=(0.36, 0.5), vel=(0.5, 0.0), goal=(0.5, 0.5)))
    r = w.step(np.array([[0.0, 0.0]], np.float32))  # velocity 0.45 after damping: pos.x -> 0.405
    assert r.success[0] and r.terminated[0] and not r.violation[0]
    assert r.reward[0] == 1.0 and w.concepts()["at_goal"][0] == 1


def test_time_limit_truncates():
    w = _world(max_steps=3)
    w.set_state(_state(pos=(0.0, 0.0)))
    flags = [w.step(np.zeros((1, 2), np.float32)) for _ in range(3)]
    assert [bool(f.truncated[0]) for f in flags] == [False, False, True]
    assert not any(f.terminated[0] for f in flags) and flags[0].reward[0] == pytest.approx(-0.01)


def test_concepts_and_rays_equal_hand_computed_values():
    w = _world(near_margin=0.15, goal_radius=0.1, num_rays=8, ray_range=0.5)
    obs = w.set_state(_state(pos=(0.4, 0.0), vel=(0.3, 0.4), goal=(0.5, -0.5),
                             centers=[(0.0, 0.0), (0.6, 0.6)], radii=[0.3, 0.1]))
    c = w.concepts()
    w.schema.check(c)
    assert c["in_hazard"][0] == 0 and c["near_hazard"][0] == 1 and c["at_goal"][0] == 0
    assert c["dist_to_hazard"][0] == pytest.approx(0.1, abs=1e-6)  # 0.4 - 0.3 beats |(-0.2,-0.6)| - 0.1
    assert c["dist_to_goal"][0] == pytest.approx(math.sqrt(0.26), abs=1e-6)
    assert c["speed"][0] == pytest.approx(0.5, abs=1e-6)
    # Rays at 0, 45, ..., 315 degrees. Towards 180: the big disc's edge at x = 0.3. Towards 135 and
    # 225: t^2 - 0.4 sqrt(2) t + 0.07 = 0, so t = (0.4 sqrt(2) - 0.2) / 2. Others miss: capped at 0.5.
    diag = (0.4 * math.sqrt(2) - 0.2) / 2
    np.testing.assert_allclose(obs[0, 4:12], [0.5, 0.5, 0.5, diag, 0.1, diag, 0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(obs[0, :4], [0.4, 0.0, 0.3, 0.4], atol=1e-6)
    np.testing.assert_allclose(obs[0, 12:], [0.1, -0.5], atol=1e-6)


def _marched_rays(pos, centers, radii, num_rays, cap, ds=1e-4) -> np.ndarray:
    """Reference: walk each ray in small steps until it crosses a hazard boundary."""
    out = np.full(num_rays, cap)
    inside0 = np.linalg.norm(pos - centers, axis=-1) < radii
    s = np.arange(ds, cap + ds, ds)[:, None]
    for j in range(num_rays):
        u = np.array([math.cos(2 * math.pi * j / num_rays), math.sin(2 * math.pi * j / num_rays)])
        pts = pos + s * u  # [m 2]
        inside = np.linalg.norm(pts[:, None] - centers, axis=-1) < radii  # [m k]
        crossed = (inside != inside0).any(-1)
        if crossed.any():
            out[j] = s[np.argmax(crossed), 0]
    return out


def test_rays_match_ray_marching_on_random_layouts():
    w = PointMass(6, PointMassParams(families=FAMILIES, num_rays=12), seed=5)
    obs = w.reset()
    for i in range(6):
        active = w.hazard_radius[i] > 0
        ref = _marched_rays(w.pos[i], w.hazard_center[i][active], w.hazard_radius[i][active], 12, 0.5)
        np.testing.assert_allclose(obs[i, 4:16], ref, atol=2e-4)


@pytest.mark.parametrize("params", [
    dict(families=FAMILIES),
    dict(families=("two_hazards",), goal_obs="at_start", observe_velocity=False, max_steps=15),
])
def test_vectorised_step_equals_single_envs_stepped_separately(params):
    p = PointMassParams(**params)
    n = 5
    vec = PointMass(n, p, seed=1)
    vec.reset()
    state = vec.get_state()
    singles = []
    for i in range(n):
        s = PointMass(1, p)
        s.set_state(PointMassState(*(np.asarray(a)[i : i + 1] for a in vars(state).values())))
        singles.append(s)
    rng = np.random.default_rng(0)
    for _ in range(25):
        a = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
        rv = vec.step(a)
        rs = [s.step(a[i : i + 1]) for i, s in enumerate(singles)]
        for field in ("obs", "reward", "terminated", "truncated", "success", "violation"):
            np.testing.assert_array_equal(getattr(rv, field), np.concatenate([getattr(r, field) for r in rs]))
        for k, v in vec.concepts().items():
            np.testing.assert_array_equal(v, np.concatenate([s.concepts()[k] for s in singles]))


def _oracle_rates(families, n=200, seed=0) -> tuple[float, float]:
    """Success and violation rate of one oracle episode per env."""
    w = PointMass(n, PointMassParams(families=families), seed=seed)
    w.reset()
    outcome = np.zeros(n, int)  # 0 running, 1 success, 2 violation, 3 time out
    for _ in range(w.params.max_steps):
        r = w.step(w.oracle_actions())
        newly = (outcome == 0) & (r.terminated | r.truncated)
        outcome[newly] = np.where(r.success, 1, np.where(r.violation, 2, 3))[newly]
        if (outcome > 0).all():
            break
        w.reset(mask=r.terminated | r.truncated)
    return float((outcome == 1).mean()), float((outcome == 2).mean())


@pytest.mark.parametrize("families", [("one_hazard", "two_hazards"), ("wall_of_hazards",)])
def test_oracle_reaches_the_goal_without_violations(families):
    success, violation = _oracle_rates(families)
    assert success >= 0.9 and violation <= 0.02, (success, violation)


def test_random_rollouts_keep_concepts_valid_and_observations_in_shape():
    w = PointMass(16, PointMassParams(families=FAMILIES), seed=2)
    obs = w.reset()
    rng = np.random.default_rng(0)
    for _ in range(60):
        assert obs.shape == (16, w.obs_dim) and obs.dtype == np.float32 and np.isfinite(obs).all()
        w.schema.check(w.concepts())
        assert set(w.family().tolist()) <= set(range(len(FAMILIES)))
        r = w.step(w.sample_actions(rng))
        obs = w.reset(mask=r.terminated | r.truncated) if (r.terminated | r.truncated).any() else r.obs


def test_same_seed_same_episodes_and_goal_shown_only_at_start():
    def rollout(seed):
        w = PointMass(4, PointMassParams(families=FAMILIES, goal_obs="at_start"), seed=seed)
        out = [w.reset()]
        rng = np.random.default_rng(7)
        for _ in range(10):
            out.append(w.step(w.sample_actions(rng)).obs)
        out.append(w.reset(mask=np.array([True, False, True, False])))
        return np.stack(out)

    a, b, c = rollout(3), rollout(3), rollout(4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert (a[0, :, -2:] != 0).any() and (a[1:11, :, -2:] == 0).all()  # goal visible at step 0 only
    assert (a[11, [0, 2], -2:] != 0).any() and (a[11, [1, 3], -2:] == 0).all()


def test_bad_params_and_states_are_refused_with_the_allowed_values():
    with pytest.raises(ValueError, match="one_hazard"):
        PointMassParams(families=("moat",))
    with pytest.raises(ValueError, match="goal_obs"):
        PointMassParams(goal_obs="sometimes")
    w = PointMass(2)
    too_many = MAX_HAZARDS + 1
    bad = PointMassState(np.zeros((2, 2)), np.zeros((2, 2)), np.zeros((2, 2)), np.zeros((2, too_many, 2)),
                         np.ones((2, too_many)), np.zeros(2), np.zeros(2))
    with pytest.raises(ValueError, match="k<="):
        w.set_state(bad)


def test_registered_world_and_gym_id():
    import gymnasium as gym

    from worlds import make_world

    w = make_world("pointmass", num_envs=3, seed=0, families=("wall_of_hazards",), num_rays=4)
    assert isinstance(w, PointMass) and w.reset().shape == (3, 10)
    with pytest.raises(ValueError, match="allowed: families"):
        make_world("pointmass", radius=1.0)
    env = gym.make("ontolab/PointMass-v0", num_rays=4)
    obs, info = env.reset(seed=0)
    assert obs.shape == (10,) and set(info["concepts"]) == set(w.schema.names)
