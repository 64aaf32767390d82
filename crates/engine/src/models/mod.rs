//! Model ports: BlazeFace, face mesh, selfie segmentation, Real-ESRGAN (RRDBNet, SRVGGNetCompact).
pub mod blazeface;
pub mod facemesh;
pub mod selfie;
pub mod rrdbnet;
pub mod srvgg;
