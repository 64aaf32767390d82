//! Model ports: BlazeFace, face mesh, selfie segmentation.
pub mod blazeface;
pub mod facemesh;
pub mod selfie;
