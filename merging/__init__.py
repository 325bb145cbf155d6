"""Isoscope's merge engine: checkpoint IO, task vectors, linear algebra and one file per method.

Pure library code: imports torch, numpy and safetensors only (never streamlit). Importing it
sets nothing process-wide; entry points call ``merging.runtime.use_huge_pages()``.
"""
