"""Pure-jnp diffusion maths: schedules, image and label diffusion, losses, samplers."""
