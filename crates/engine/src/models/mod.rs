//! Model ports: BlazeFace, face mesh, selfie segmentation.
pub mod facemesh;
