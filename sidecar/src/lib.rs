//! `detour-sidecar`: the OpenAI-compatible proxy that fails over between LLM providers.

pub mod scoring;
