"""The model registry's alias names: `optimize` moves them, the deployments read them."""

PRODUCTION = "production"  # each gate's winner on CPU: `models:/<name>@production`
PRODUCTION_GPU = "production-gpu"  # the GPU gate's (`python -m infergraph.optimize --gpu-results`)
