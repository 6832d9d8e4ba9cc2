//! dps-operator: manages Azure IoT Hub Device Provisioning Service enrollments from Kubernetes.

pub mod api;
pub mod controller;
pub mod devenv;
pub mod dps;
pub mod emulator;
