"""Deployment helpers: the generated parts of the KubeRay manifests (`kuberay`), the image's cache
warm-up (`warm`)."""
