"""Isoscope's merge engine: checkpoint IO, task vectors, linear algebra and one file per method.

Pure library code: imports torch, numpy and safetensors only (never streamlit).
"""
