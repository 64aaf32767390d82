//! Model ports: BlazeFace, face mesh, selfie segmentation.
