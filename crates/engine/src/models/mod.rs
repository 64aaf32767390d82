//! Model ports: BlazeFace, face mesh, selfie segmentation, GFPGAN face restoration, Real-ESRGAN
//! (RRDBNet, SRVGGNetCompact).
pub mod blazeface;
pub mod facemesh;
pub mod gfpgan;
pub mod selfie;
pub mod rrdbnet;
pub mod srvgg;
