"""Domain adaptation objectives on the penultimate features of a source and a target batch.

- ``dann`` (Ganin & Lempitsky 2015): a domain discriminator (its own params, trained, never
  exported) on the features behind a gradient reversal layer: the discriminator learns to
  tell the domains apart, the features learn to make it fail. The reversal is scaled by
  ``adapt_weight x lambda_p``, with the paper's schedule ``lambda_p = 2 / (1 + exp(-10 p)) -
  1`` over training progress ``p`` in [0, 1].
- ``coral`` (Sun & Saenko 2016, Deep CORAL): ``||C_s - C_t||_F^2 / (4 d^2)``, the distance
  between the two batches' feature covariances, weighted by ``adapt_weight``.
- ``mmd`` (Long et al. 2015, DAN): the squared maximum mean discrepancy between the two
  batches' features under a sum of Gaussian kernels (bandwidths 2^-2..2^2 times the batch's
  mean squared distance, held constant in the gradient), weighted by ``adapt_weight``.

The target batch carries no labels: its inputs are all the step sees of the target.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

OBJECTIVES = ("none", "dann", "coral", "mmd")
DESCRIPTIONS = {
    "none": "no adaptation: source labels only (the target, if set, is only evaluated)",
    "dann": "Ganin & Lempitsky 2015: domain discriminator behind a gradient reversal layer, "
            "lambda schedule 2/(1+exp(-10p))-1",
    "coral": "Sun & Saenko 2016 Deep CORAL: feature covariances of source and target aligned",
    "mmd": "Long et al. 2015 (DAN): multi-kernel Gaussian MMD between source and target "
           "features",
}
DISCRIMINATOR = "domain_discriminator"  # its params' top-level key beside backbone and head
_MMD_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)


class Discriminator(nn.Module):
    """Features -> one domain logit (source 0, target 1) through one ReLU layer of
    ``width``: the paper's domain classifier for MNIST -> MNIST-M (x -> 100 -> 1)."""

    width: int = 100

    @nn.compact
    def __call__(self, x):
        return nn.Dense(1)(nn.relu(nn.Dense(self.width)(x)))[:, 0]


@jax.custom_vjp
def reverse_gradient(x, scale):
    """Returns ``x``; its gradient comes back multiplied by ``-scale`` (no gradient to scale)."""
    return x


def _reverse_fwd(x, scale):
    return x, scale


def _reverse_bwd(scale, g):
    return -scale * g, jnp.zeros_like(scale)


reverse_gradient.defvjp(_reverse_fwd, _reverse_bwd)


def dann_lambda(progress):
    """Returns the paper's adaptation factor at training progress ``progress`` in [0, 1]."""
    return 2.0 / (1.0 + jnp.exp(-10.0 * progress)) - 1.0


def dann_loss(discriminator, disc_params, source, target, scale):
    """Returns the discriminator's mean logistic loss over both batches (source label 0,
    target 1), its input behind ``reverse_gradient(., scale)``."""
    features = reverse_gradient(jnp.concatenate([source, target]), scale)
    logits = discriminator.apply({"params": disc_params}, features)
    domains = jnp.concatenate([jnp.zeros(len(source)), jnp.ones(len(target))])
    return optax.sigmoid_binary_cross_entropy(logits, domains).mean()


def coral_loss(source, target):
    """Returns Deep CORAL's loss: ``||C_s - C_t||_F^2 / (4 d^2)`` of the batches' feature
    covariances (unbiased, ``n - 1``)."""
    def covariance(x):
        centred = x - x.mean(0, keepdims=True)
        return centred.T @ centred / max(x.shape[0] - 1, 1)  # checks require batches of 2+

    d = source.shape[1]
    return jnp.sum((covariance(source) - covariance(target)) ** 2) / (4.0 * d * d)


def mmd_loss(source, target):
    """Returns the squared MMD (biased estimate) between the batches under a sum of Gaussian
    kernels ``exp(-|x - y|^2 / (s * m))`` for s in 2^-2..2^2, ``m`` the mean squared
    distance over both batches (a constant in the gradient)."""
    x = jnp.concatenate([source, target])
    sq = jnp.sum(x * x, 1)
    dist = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0)
    n = x.shape[0]
    # At least tiny: features collapsed to one point (dead units) give 0, not 0/0.
    mean = jnp.maximum(jax.lax.stop_gradient(jnp.sum(dist) / (n * n - n)), 1e-12)
    kernel = sum(jnp.exp(-dist / (s * mean)) for s in _MMD_SCALES)
    ns = source.shape[0]
    return (kernel[:ns, :ns].mean() + kernel[ns:, ns:].mean()
            - 2.0 * kernel[:ns, ns:].mean())
