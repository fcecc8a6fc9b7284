"""adam_jax against float64 NumPy transcriptions of the papers' pseudo-code.

The references below are written from Algorithm 1 (Adam) and Algorithm 2
(AdaMax) of Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR
2015, and from the Nesterov (NAdam) correction of Dozat (2016) in the form
optax uses, not from any library. In float64 the library must follow them to
a relative 1e-10 at every step, both on a fixed gradient sequence and on whole
optimization trajectories (gradients evaluated at the current parameters).

The convergence tests at the end run in float32 on a parabola and on the
Rosenbrock function.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_jax

GradFn = Callable[[int, np.ndarray], np.ndarray]

RTOL = 1e-10
# Parameters start at O(1); below this magnitude a parameter is compared
# absolutely (RTOL * FLOOR), so values crossing zero do not make the relative
# error meaningless.
FLOOR = 1e-3


# --------------------------------------------------------------------------
# References (float64 NumPy), transcribed from the papers.
# --------------------------------------------------------------------------


def adam_paper(
  theta0: np.ndarray,
  grad: GradFn,
  steps: int,
  alpha: float,
  b1: float,
  b2: float,
  eps: float,
  eps_root: float = 0.0,
):
  """Adam, Algorithm 1 of Kingma & Ba (2015), in float64.

  The algorithm, line by line::

    m_0 <- 0  (Initialize 1st moment vector)
    v_0 <- 0  (Initialize 2nd moment vector)
    t <- 0    (Initialize timestep)
    while theta_t not converged do
      t <- t + 1
      g_t <- grad_theta f_t(theta_{t-1})  (Get gradients ... at timestep t)
      m_t <- b1 * m_{t-1} + (1 - b1) * g_t    (Update biased first moment)
      v_t <- b2 * v_{t-1} + (1 - b2) * g_t^2  (Update biased second raw moment)
      m_hat_t <- m_t / (1 - b1^t)  (Compute bias-corrected first moment)
      v_hat_t <- v_t / (1 - b2^t)  (Compute bias-corrected second raw moment)
      theta_t <- theta_{t-1} - alpha * m_hat_t / (sqrt(v_hat_t) + eps)

  ``eps_root`` (not in the paper; optax's extension) is added under the root:
  ``sqrt(v_hat_t + eps_root)``; with the default 0 this is the paper's line.

  Args:
    theta0: initial parameters.
    grad: ``grad(t, theta_{t-1}) -> g_t``.
    steps: number of iterations of the loop.
    alpha, b1, b2, eps, eps_root: the hyperparameters.

  Returns:
    ``(thetas, m, v)``: ``thetas[t - 1]`` is theta_t, and the final moments.
  """
  theta = np.array(theta0, np.float64)
  m = np.zeros_like(theta)
  v = np.zeros_like(theta)
  t = 0
  thetas = []
  for _ in range(steps):
    t = t + 1
    g = grad(t, theta)
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g**2
    m_hat = m / (1 - b1**t)
    v_hat = v / (1 - b2**t)
    theta = theta - alpha * m_hat / (np.sqrt(v_hat + eps_root) + eps)
    thetas.append(theta)
  return np.stack(thetas), m, v


def nadam_paper(
  theta0: np.ndarray,
  grad: GradFn,
  steps: int,
  alpha: float,
  b1: float,
  b2: float,
  eps: float,
  eps_root: float = 0.0,
):
  """Adam with Nesterov momentum (NAdam, Dozat 2016), as in optax, in float64.

  Algorithm 1 with the bias-corrected first moment replaced by the Nesterov
  look-ahead::

    m_hat_t <- b1 * m_t / (1 - b1^(t+1)) + (1 - b1) * g_t / (1 - b1^t)

  every other line unchanged. Arguments and result as :func:`adam_paper`.
  """
  theta = np.array(theta0, np.float64)
  m = np.zeros_like(theta)
  v = np.zeros_like(theta)
  t = 0
  thetas = []
  for _ in range(steps):
    t = t + 1
    g = grad(t, theta)
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g**2
    m_hat = b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)
    v_hat = v / (1 - b2**t)
    theta = theta - alpha * m_hat / (np.sqrt(v_hat + eps_root) + eps)
    thetas.append(theta)
  return np.stack(thetas), m, v


def adamax_paper(
  theta0: np.ndarray,
  grad: GradFn,
  steps: int,
  alpha: float,
  b1: float,
  b2: float,
  eps: float,
):
  """AdaMax, Algorithm 2 (Section 7.1) of Kingma & Ba (2015), in float64.

  The algorithm, with optax's ``eps`` inside the maximum (the paper has
  none, and then divides by zero while every gradient so far is zero)::

    m_0 <- 0  (Initialize 1st moment vector)
    u_0 <- 0  (Initialize the exponentially weighted infinity norm)
    t <- 0    (Initialize timestep)
    while theta_t not converged do
      t <- t + 1
      g_t <- grad_theta f_t(theta_{t-1})
      m_t <- b1 * m_{t-1} + (1 - b1) * g_t  (Update biased first moment)
      u_t <- max(b2 * u_{t-1}, |g_t| + eps)  (paper: max(b2 * u_{t-1}, |g_t|))
      theta_t <- theta_{t-1} - (alpha / (1 - b1^t)) * m_t / u_t

  Arguments and result as :func:`adam_paper` (the last moment is u_t).
  """
  theta = np.array(theta0, np.float64)
  m = np.zeros_like(theta)
  u = np.zeros_like(theta)
  t = 0
  thetas = []
  for _ in range(steps):
    t = t + 1
    g = grad(t, theta)
    m = b1 * m + (1 - b1) * g
    u = np.maximum(b2 * u, np.abs(g) + eps)
    theta = theta - (alpha / (1 - b1**t)) * m / u
    thetas.append(theta)
  return np.stack(thetas), m, u


# --------------------------------------------------------------------------
# Running adam_jax (float64, jitted step) on the same gradients.
# --------------------------------------------------------------------------


def run_adam_jax(tx, theta0, steps, *, grads=None, loss=None):
  """Runs ``tx`` for ``steps`` jitted steps from ``theta0`` in float64.

  The gradient of step ``t`` is ``grads[t - 1]`` when ``grads`` is given,
  else ``jax.grad(loss)`` at the current parameters.

  Returns:
    ``(thetas, mu, nu)`` like the references.
  """
  assert jax.config.jax_enable_x64, "the x64 fixture did not enable float64"
  params = jnp.asarray(theta0, jnp.float64)
  assert params.dtype == jnp.float64
  state = tx.init(params)

  @jax.jit
  def step(params, state, g):
    if loss is not None:
      g = jax.grad(loss)(params)
    updates, state = tx.update(g, state, params)
    return optax.apply_updates(params, updates), state

  dummy = jnp.zeros_like(params)
  thetas = []
  for t in range(1, steps + 1):
    g = dummy if grads is None else jnp.asarray(grads[t - 1], jnp.float64)
    params, state = step(params, state, g)
    assert params.dtype == jnp.float64
    thetas.append(np.asarray(params))
  adam_state = state[0]
  assert isinstance(adam_state, adam_jax.ScaleByAdamState)
  assert int(adam_state.count) == steps
  assert adam_state.mu.dtype == jnp.float64
  assert adam_state.nu.dtype == jnp.float64
  return np.stack(thetas), np.asarray(adam_state.mu), np.asarray(adam_state.nu)


def assert_rel_close(actual, expected, what, floor=FLOOR):
  """``|actual - expected| <= RTOL * max(|expected|, floor)`` elementwise."""
  actual = np.asarray(actual, np.float64)
  expected = np.asarray(expected, np.float64)
  assert actual.shape == expected.shape, what
  assert np.all(np.isfinite(actual)), f"{what}: non-finite values"
  err = np.abs(actual - expected)
  tol = RTOL * np.maximum(np.abs(expected), floor)
  bad = err > tol
  if np.any(bad):
    idx = np.unravel_index(np.argmax(err / tol), err.shape)
    raise AssertionError(
      f"{what}: {int(bad.sum())} of {bad.size} values off by more than"
      f" rtol={RTOL}; worst at index {idx}: got {actual[idx]!r}, expected"
      f" {expected[idx]!r} (error {err[idx]:.3e}, tolerance {tol[idx]:.3e})"
    )


def assert_trajectories_match(ours, ref, floor=FLOOR):
  thetas, mu, nu = ours
  ref_thetas, ref_m, ref_v = ref
  assert thetas.shape == ref_thetas.shape
  for t in range(thetas.shape[0]):
    assert_rel_close(thetas[t], ref_thetas[t], f"theta at step t={t + 1}", floor)
  # The final moments, compared relative to their own scale.
  assert_rel_close(mu, ref_m, "mu after the last step", np.abs(ref_m).max() * 1e-6)
  assert_rel_close(nu, ref_v, "nu after the last step", np.abs(ref_v).max() * 1e-6)


# --------------------------------------------------------------------------
# Settings and gradient sources.
# --------------------------------------------------------------------------

# (alpha, b1, b2, eps)
SETTINGS = [
  pytest.param(1e-3, 0.9, 0.999, 1e-8, id="paper-defaults"),
  pytest.param(1e-2, 0.0, 0.99, 1e-8, id="b1=0-b2=.99"),
  pytest.param(3e-2, 0.5, 0.99, 1e-3, id="eps=1e-3"),
  pytest.param(5e-3, 0.95, 0.9999, 1e-6, id="slow-decay"),
]
# The paper's suggested AdaMax settings (Section 7.1) first.
ADAMAX_SETTINGS = [
  pytest.param(2e-3, 0.9, 0.999, 1e-8, id="paper-defaults"),
  pytest.param(1e-2, 0.0, 0.99, 1e-8, id="b1=0-b2=.99"),
  pytest.param(3e-2, 0.5, 0.99, 1e-3, id="eps=1e-3"),
]
OPTIMIZERS = {
  "adam": (adam_jax.adam, adam_paper),
  "nadam": (adam_jax.nadam, nadam_paper),
  "adamax": (adam_jax.adamax, adamax_paper),
}

N_PARAMS = 50
N_STEPS_SEQUENCE = 300
N_STEPS_TRAJECTORY = 200
ZERO_STEPS = (1, 2, 57, 150, 151, 152, 153, 299)  # 1-based t with g_t = 0


def rich_gradients(seed=0):
  """(300, 50) gradients: random signs, magnitudes 1e-6..1e2, zero steps.

  Each coordinate has its own typical magnitude (10^-6 .. 10^2) multiplied by
  a per-step log-uniform factor, so the second moment spans ~16 decades;
  a few whole steps are exactly zero, as are ~5% of single entries.
  """
  rng = np.random.RandomState(seed)
  shape = (N_STEPS_SEQUENCE, N_PARAMS)
  scale = 10.0 ** np.linspace(-6.0, 2.0, N_PARAMS)
  jitter = 10.0 ** rng.uniform(-1.0, 0.0, size=shape)
  sign = rng.choice([-1.0, 1.0], size=shape)
  g = sign * scale * jitter
  # A few coordinates get a persistent drift so that m does not average to 0.
  g[:, ::7] += 0.5 * scale[::7]
  g[rng.uniform(size=shape) < 0.05] = 0.0
  for t in ZERO_STEPS:
    g[t - 1] = 0.0
  assert np.abs(g[g != 0]).min() < 2e-6 and np.abs(g).max() > 50.0
  return g


def initial_params(n, seed=1):
  return np.random.RandomState(seed).normal(size=n)


def make_tx(name, alpha, b1, b2, eps, eps_root):
  make = OPTIMIZERS[name][0]
  if name == "adamax":
    assert eps_root == 0.0
    return make(learning_rate=alpha, b1=b1, b2=b2, eps=eps)
  return make(learning_rate=alpha, b1=b1, b2=b2, eps=eps, eps_root=eps_root)


def run_reference(name, theta0, grad, steps, alpha, b1, b2, eps, eps_root):
  ref = OPTIMIZERS[name][1]
  if name == "adamax":
    return ref(theta0, grad, steps, alpha, b1, b2, eps)
  return ref(theta0, grad, steps, alpha, b1, b2, eps, eps_root)


def cases():
  """(optimizer, alpha, b1, b2, eps, eps_root) combinations."""
  out = []
  for name in ("adam", "nadam"):
    for s in SETTINGS:
      out.append(pytest.param(name, *s.values, 0.0, id=f"{name}-{s.id}"))
  for s in SETTINGS[:2]:
    out.append(pytest.param("adam", *s.values, 1e-10, id=f"adam-eps_root-{s.id}"))
  out.append(pytest.param("nadam", *SETTINGS[0].values, 1e-10, id="nadam-eps_root"))
  for s in ADAMAX_SETTINGS:
    out.append(pytest.param("adamax", *s.values, 0.0, id=f"adamax-{s.id}"))
  return out


# Objectives for the trajectory tests: a NumPy gradient for the reference and
# a JAX loss (differentiated by jax.grad) for adam_jax.


def quadratic_problem(n=20, seed=2):
  """0.5 (x - c)^T A (x - c), A SPD with eigenvalues 1e-1 .. 1e1.

  The start is ~3 per coordinate away from c, so in 200 steps every setting
  is still descending or settling, not bouncing chaotically around c (where
  rounding errors would grow exponentially, see ``check_well_conditioned``).
  """
  rng = np.random.RandomState(seed)
  q, _ = np.linalg.qr(rng.normal(size=(n, n)))
  a = (q * np.logspace(-1.0, 1.0, n)) @ q.T
  a = 0.5 * (a + a.T)
  c = rng.normal(size=n)
  theta0 = c + 3.0 * rng.normal(size=n)
  a_j, c_j = jnp.asarray(a, jnp.float64), jnp.asarray(c, jnp.float64)

  def grad_np(t, x):
    del t
    return a @ (x - c)

  def loss(x):
    d = x - c_j
    return 0.5 * d @ (a_j @ d)

  return theta0, grad_np, loss


def logistic_problem(n=10, m=200, seed=3):
  """Mean logistic loss + 1e-3/2 |w|^2 on a fixed synthetic data set."""
  rng = np.random.RandomState(seed)
  x = rng.normal(size=(m, n)) * np.logspace(-1.0, 1.0, n)
  w_true = rng.normal(size=n)
  y = np.where(x @ w_true + 0.5 * rng.normal(size=m) > 0, 1.0, -1.0)
  lam = 1e-3
  theta0 = rng.normal(size=n)
  x_j, y_j = jnp.asarray(x, jnp.float64), jnp.asarray(y, jnp.float64)

  def grad_np(t, w):
    del t
    z = y * (x @ w)
    # d/dz log(1 + exp(-z)) = -sigmoid(-z) = -1 / (1 + exp(z))
    return x.T @ (-y / (1.0 + np.exp(z))) / m + lam * w

  def loss(w):
    z = y_j * (x_j @ w)
    return jnp.mean(jnp.logaddexp(jnp.zeros_like(z), -z)) + 0.5 * lam * (w @ w)

  return theta0, grad_np, loss


PROBLEMS = {"quadratic": quadratic_problem, "logistic": logistic_problem}


# --------------------------------------------------------------------------
# Tests: float64 agreement with the references.
# --------------------------------------------------------------------------


def test_x64_fixture_enables_float64(x64):
  del x64
  assert jax.config.jax_enable_x64
  assert jnp.asarray(1.0, jnp.float64).dtype == jnp.float64
  assert jnp.zeros(3).dtype == jnp.float64


@pytest.mark.parametrize(("name", "alpha", "b1", "b2", "eps", "eps_root"), cases())
def test_gradient_sequence_matches_reference(x64, name, alpha, b1, b2, eps, eps_root):
  del x64
  grads = rich_gradients()
  theta0 = initial_params(N_PARAMS)
  tx = make_tx(name, alpha, b1, b2, eps, eps_root)
  ours = run_adam_jax(tx, theta0, N_STEPS_SEQUENCE, grads=grads)
  ref = run_reference(
    name,
    theta0,
    lambda t, theta: grads[t - 1],
    N_STEPS_SEQUENCE,
    alpha,
    b1,
    b2,
    eps,
    eps_root,
  )
  # Sanity: g_1 = 0 leaves theta_1 = theta_0, and the run did move.
  assert np.all(ref[0][0] == theta0)
  assert np.abs(ref[0][-1] - theta0).max() > 10 * alpha
  assert_trajectories_match(ours, ref)


def check_well_conditioned(name, theta0, grad_np, steps, *hyper):
  """Asserts the reference trajectory is stable under rounding-size noise.

  A trajectory comparison at 1e-10 is only meaningful where the optimization
  does not amplify rounding errors: Adam bouncing around a minimum with a
  large step can double a 1e-16 difference every step (it is then the
  problem, not the library, that decides the outcome). Restarting the
  reference from ``theta0`` moved by ~5 ulps must change it by at most a
  tenth of the tolerance.
  """
  base = run_reference(name, theta0, grad_np, steps, *hyper)[0]
  for seed in range(2):
    noise = np.random.RandomState(100 + seed).uniform(-1.0, 1.0, theta0.shape)
    moved = run_reference(name, theta0 * (1 + 1e-15 * noise), grad_np, steps, *hyper)
    rel = np.abs(moved[0] - base) / np.maximum(np.abs(base), FLOOR)
    assert rel.max() <= RTOL / 10, (
      f"ill-conditioned test problem: 1e-15 noise in theta0 moves the"
      f" reference by {rel.max():.1e} (relative); pick a smaller step"
    )


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize(("name", "alpha", "b1", "b2", "eps", "eps_root"), cases())
def test_trajectory_matches_reference(x64, problem, name, alpha, b1, b2, eps, eps_root):
  """adam_jax (jax.grad) and the reference (NumPy gradient) optimize alike."""
  del x64
  theta0, grad_np, loss = PROBLEMS[problem]()
  hyper = (alpha, b1, b2, eps, eps_root)
  tx = make_tx(name, *hyper)
  ours = run_adam_jax(tx, theta0, N_STEPS_TRAJECTORY, loss=loss)
  ref = run_reference(name, theta0, grad_np, N_STEPS_TRAJECTORY, *hyper)
  # The run really descends (so the comparison is not of a stuck run), and
  # the two gradients agree (so a mismatch below is the optimizer's).
  loss64 = jax.jit(loss)
  start_loss = float(loss64(jnp.asarray(theta0, jnp.float64)))
  assert float(loss64(jnp.asarray(ref[0][-1], jnp.float64))) < 0.9 * start_loss
  g_jax = np.asarray(jax.grad(loss)(jnp.asarray(theta0, jnp.float64)))
  np.testing.assert_allclose(g_jax, grad_np(1, theta0), rtol=1e-12, atol=1e-15)
  check_well_conditioned(name, theta0, grad_np, N_STEPS_TRAJECTORY, *hyper)
  assert_trajectories_match(ours, ref)


def test_scale_by_adam_matches_reference_direction(x64):
  """scale_by_adam alone returns m_hat / (sqrt(v_hat) + eps), no step size."""
  del x64
  grads = rich_gradients(seed=5)
  tx = adam_jax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8)
  # Run the reference with alpha = -1, so theta_t - theta_{t-1} is the direction.
  ref_thetas, _, _ = adam_paper(
    np.zeros(N_PARAMS), lambda t, th: grads[t - 1], 50, -1.0, 0.9, 0.999, 1e-8
  )
  ref_dirs = np.diff(ref_thetas, axis=0, prepend=np.zeros((1, N_PARAMS)))
  assert jax.config.jax_enable_x64
  state = tx.init(jnp.zeros(N_PARAMS, jnp.float64))
  update = jax.jit(tx.update)
  for t in range(1, 51):
    u, state = update(jnp.asarray(grads[t - 1], jnp.float64), state)
    assert u.dtype == jnp.float64
    # ref_dirs carries one rounding of the theta differences: compare with
    # the floor at the direction's O(1) scale.
    assert_rel_close(u, ref_dirs[t - 1], f"direction at t={t}", floor=1.0)


# --------------------------------------------------------------------------
# Convergence (float32).
# --------------------------------------------------------------------------


def _minimize(tx, loss, x0, steps):
  """``steps`` Adam steps on ``loss`` in one jitted ``lax.scan``."""

  @jax.jit
  def run(x0):
    def body(carry, _):
      x, state = carry
      g = jax.grad(loss)(x)
      updates, state = tx.update(g, state, x)
      return (optax.apply_updates(x, updates), state), None

    (x, _), _ = jax.lax.scan(body, (x0, tx.init(x0)), None, length=steps)
    return x

  return run(x0)


def test_adam_minimizes_parabola():
  c = jnp.asarray([1.0, -2.0, 0.5, 3.0, -0.25], jnp.float32)

  def loss(x):
    return jnp.sum((x - c) ** 2)

  x0 = jnp.zeros(5, jnp.float32)
  x = _minimize(adam_jax.adam(learning_rate=1e-2), loss, x0, 3000)
  assert x.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(x), np.asarray(c), rtol=0, atol=1e-4)


def test_adam_minimizes_rosenbrock():
  def rosenbrock(p):
    x, y = p[0], p[1]
    return (1.0 - x) ** 2 + 100.0 * (y - x**2) ** 2

  x0 = jnp.asarray([-1.5, 2.0], jnp.float32)
  x = _minimize(adam_jax.adam(learning_rate=1e-2), rosenbrock, x0, 20000)
  assert x.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(x), [1.0, 1.0], rtol=0, atol=1e-3)
