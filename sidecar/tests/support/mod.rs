pub mod proxy;
pub mod sidecar;
