//! Reading PyTorch checkpoints (`torch.save` zip archives) from bytes, for user-imported models
//! that ship only as `.pth` (GFPGAN v1.4). candle's own `pickle` reader opens a path; the engine
//! gets bytes, so this walks the archive in memory with candle's unpickler and builds the tensors.

use std::collections::HashMap;
use std::io::{Cursor, Read};

use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::error::{EngineError, Result};

fn bad(model: &str, reason: impl Into<String>) -> EngineError {
    EngineError::Model { model: model.into(), reason: reason.into() }
}

/// All float tensors of a `.pth` file, as f32. With `key` (e.g. `params_ema`) the state dict is
/// that entry of the top-level dict; a checkpoint that lacks it is refused with a message.
pub fn read_pth(model: &str, bytes: &[u8], key: Option<&str>, device: &Device) -> Result<HashMap<String, Tensor>> {
    read(model, bytes, key, true, device)
}

/// Like [`read_pth`], but a checkpoint without `key` is read as a plain state dict (the compact
/// Real-ESRGAN models ship both ways).
pub fn read_pth_or_root(model: &str, bytes: &[u8], key: &str, device: &Device) -> Result<HashMap<String, Tensor>> {
    read(model, bytes, Some(key), false, device)
}

fn read(model: &str, bytes: &[u8], key: Option<&str>, strict: bool, device: &Device) -> Result<HashMap<String, Tensor>> {
    let not_pth = |e: String| bad(model, format!("not a PyTorch checkpoint ({e}); import the original .pth file"));
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| not_pth(e.to_string()))?;
    let pkl = zip
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.into_owned()))
        .find(|n| n.ends_with("data.pkl"))
        .ok_or_else(|| not_pth("no data.pkl in the archive".into()))?;
    let dir = pkl.strip_suffix(".pkl").unwrap_or(&pkl).to_owned();
    let obj = {
        let entry = zip.by_name(&pkl).map_err(|e| not_pth(e.to_string()))?;
        let mut reader = std::io::BufReader::new(entry);
        let mut stack = Stack::empty();
        stack.read_loop(&mut reader).map_err(|e| not_pth(e.to_string()))?;
        stack.finalize().map_err(|e| not_pth(e.to_string()))?
    };
    let obj = match key {
        Some(key) => match obj {
            Object::Dict(items) => {
                let wanted = Object::Unicode(key.to_owned());
                match items.iter().position(|(k, _)| *k == wanted) {
                    Some(i) => items.into_iter().nth(i).map(|(_, v)| v).unwrap_or(Object::None),
                    None if !strict => Object::Dict(items),
                    None => return Err(bad(model, format!("the checkpoint has no '{key}' weights; import the original release file"))),
                }
            }
            _ => return Err(bad(model, "the checkpoint is not a dict of weights")),
        },
        None => obj,
    };
    let Object::Dict(items) = obj else {
        return Err(bad(model, "the checkpoint's weights are not a dict of tensors"));
    };
    let mut infos = Vec::with_capacity(items.len());
    for (name, value) in items {
        match value.into_tensor_info(name, std::path::Path::new(&dir)) {
            Ok(Some(info)) if matches!(info.dtype, DType::F32 | DType::F16 | DType::BF16 | DType::F64) => infos.push(info),
            // Not a float tensor (a nested dict, a number, an integer buffer): nothing a model reads.
            _ => {}
        }
    }
    // One storage at a time (several tensors may view one storage), its bytes dropped once its
    // tensors are built, so loading holds the file's bytes and the tensors but no third copy.
    infos.sort_by(|a, b| a.path.cmp(&b.path));
    let mut out = HashMap::with_capacity(infos.len());
    let mut current: Option<(String, Vec<u8>)> = None;
    for info in infos {
        if current.as_ref().map(|(p, _)| p != &info.path).unwrap_or(true) {
            let mut entry = zip.by_name(&info.path).map_err(|e| not_pth(format!("{}: {e}", info.path)))?;
            let mut buf = Vec::with_capacity(usize::try_from(entry.size()).unwrap_or(0));
            entry.read_to_end(&mut buf).map_err(|e| not_pth(format!("{}: {e}", info.path)))?;
            current = Some((info.path.clone(), buf));
        }
        let data = current.as_ref().map(|(_, b)| b.as_slice()).unwrap_or(&[]);
        let shape = info.layout.shape().clone();
        let start = info.layout.start_offset();
        let len = shape.elem_count() * info.dtype.size_in_bytes();
        if !info.layout.is_contiguous() {
            return Err(bad(model, format!("tensor {} is stored strided; re-save the checkpoint", info.name)));
        }
        let raw = data
            .get(start..start + len)
            .ok_or_else(|| bad(model, format!("tensor {} is truncated; the file is damaged", info.name)))?;
        let t = Tensor::from_raw_buffer(raw, info.dtype, shape.dims(), device)
            .and_then(|t| t.to_dtype(DType::F32))
            .map_err(|e| bad(model, format!("tensor {}: {e}", info.name)))?;
        out.insert(info.name, t);
    }
    if out.is_empty() {
        return Err(bad(model, "the checkpoint holds no float tensors"));
    }
    Ok(out)
}

/// A `VarBuilder` over the tensors of a `.pth` checkpoint (see [`read_pth`]).
pub fn pth_var_builder(model: &str, bytes: &[u8], key: Option<&str>, device: &Device) -> Result<VarBuilder<'static>> {
    let tensors = read_pth(model, bytes, key, device)?;
    Ok(VarBuilder::from_tensors(tensors, DType::F32, device))
}
