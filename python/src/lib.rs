//! weir-python: the Python module over `weir-core`.
//!
//! Status: empty. pyo3 and the maturin `pyproject.toml` come with the binding work;
//! nothing is installable yet.
#![forbid(unsafe_code)]
