//! Model ports: BlazeFace, face mesh, selfie segmentation, GFPGAN face restoration.
pub mod blazeface;
pub mod facemesh;
pub mod gfpgan;
pub mod selfie;
