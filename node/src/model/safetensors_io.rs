//! Safetensors checkpoints: memory-mapped reading of one file or a directory of shards (f32, f16
//! and bf16 converted to f32, one tensor at a time, only when asked for), and writing f32 data
//! in a chosen dtype.
//!
//! A directory is read through its `model.safetensors.index.json` when it has one (only the
//! shards it names are opened), else through every `*.safetensors` file in it.

use super::config::DType;
use super::weights::WeightsError;
use memmap2::Mmap;
use safetensors::Dtype;
use safetensors::tensor::{Metadata, SafeTensorError, SafeTensors, View};
use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// The index file HF writes beside sharded checkpoints.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// One mapped `.safetensors` file and its parsed header.
struct Shard {
    path: PathBuf,
    mmap: Mmap,
    /// Length of the JSON header; tensor data starts at `8 + header_len`.
    header_len: usize,
    meta: Metadata,
}

/// An opened checkpoint: headers parsed, data mapped, nothing converted yet.
pub struct Checkpoint {
    /// The file or directory opened; named when a tensor is missing.
    root: PathBuf,
    shards: Vec<Shard>,
    /// Tensor name → index into `shards`.
    names: HashMap<String, usize>,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> WeightsError + '_ {
    move |source| WeightsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn format_error(path: &Path, reason: impl ToString) -> WeightsError {
    WeightsError::Format {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

impl Shard {
    fn open(path: &Path) -> Result<Shard, WeightsError> {
        let file = File::open(path).map_err(io_error(path))?;
        // SAFETY: the map is read-only and Strata never writes a file it has mapped (`write`
        // replaces files by rename). Another process truncating the file while it is mapped
        // would be undefined behaviour; every mmap-based checkpoint loader accepts that risk.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io_error(path))?;
        let (header_len, meta) =
            SafeTensors::read_metadata(&mmap).map_err(|e| format_error(path, e))?;
        Ok(Shard {
            path: path.to_path_buf(),
            mmap,
            header_len,
            meta,
        })
    }
}

impl Checkpoint {
    /// Opens a `.safetensors` file, or a directory of them (sharded or not).
    pub fn open(path: &Path) -> Result<Checkpoint, WeightsError> {
        let meta = std::fs::metadata(path).map_err(io_error(path))?;
        if !meta.is_dir() {
            let shard = Shard::open(path)?;
            let names = shard.meta.tensors().into_keys().map(|n| (n, 0)).collect();
            return Ok(Checkpoint {
                root: path.to_path_buf(),
                shards: vec![shard],
                names,
            });
        }
        let index = path.join(INDEX_FILE);
        if index.is_file() {
            Checkpoint::open_indexed(path, &index)
        } else {
            Checkpoint::open_all(path)
        }
    }

    /// The shards named by the index's `weight_map`, with its name → file mapping.
    fn open_indexed(dir: &Path, index: &Path) -> Result<Checkpoint, WeightsError> {
        let text = std::fs::read_to_string(index).map_err(io_error(index))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format_error(index, e))?;
        let Some(map) = json.get("weight_map").and_then(|m| m.as_object()) else {
            return Err(format_error(index, "no `weight_map` object"));
        };
        let mut shards = Vec::new();
        let mut file_ids: HashMap<&str, usize> = HashMap::new();
        let mut names = HashMap::with_capacity(map.len());
        for (name, file) in map {
            let Some(file) = file.as_str() else {
                return Err(format_error(index, format!("`{name}` maps to {file}")));
            };
            let id = match file_ids.get(file) {
                Some(&id) => id,
                None => {
                    shards.push(Shard::open(&dir.join(file))?);
                    file_ids.insert(file, shards.len() - 1);
                    shards.len() - 1
                }
            };
            names.insert(name.clone(), id);
        }
        Ok(Checkpoint {
            root: dir.to_path_buf(),
            shards,
            names,
        })
    }

    /// Every `*.safetensors` file in `dir`; a tensor in two of them is an error.
    fn open_all(dir: &Path) -> Result<Checkpoint, WeightsError> {
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
            let p = entry.map_err(io_error(dir))?.path();
            if p.extension().is_some_and(|e| e == "safetensors") && p.is_file() {
                paths.push(p);
            }
        }
        if paths.is_empty() {
            return Err(WeightsError::NoCheckpoint {
                dir: dir.to_path_buf(),
            });
        }
        paths.sort();
        let mut shards = Vec::with_capacity(paths.len());
        let mut names = HashMap::new();
        for p in &paths {
            let shard = Shard::open(p)?;
            for name in shard.meta.tensors().into_keys() {
                if let Some(other) = names.insert(name.clone(), shards.len()) {
                    let first = shards_path(&shards, other);
                    return Err(format_error(
                        p,
                        format!("tensor `{name}` is also in {first}"),
                    ));
                }
            }
            shards.push(shard);
        }
        Ok(Checkpoint {
            root: dir.to_path_buf(),
            shards,
            names,
        })
    }

    /// The file or directory this checkpoint was opened from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the checkpoint has a tensor of this name.
    pub fn contains(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }

    /// The names of all tensors, in no particular order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.keys().map(String::as_str)
    }

    /// Reads tensor `name` as f32, checking that its shape is `expected`.
    pub fn read(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>, WeightsError> {
        let missing = || WeightsError::MissingTensor {
            dir: self.root.clone(),
            tensor: name.to_string(),
        };
        let shard = self
            .names
            .get(name)
            .and_then(|&i| self.shards.get(i))
            .ok_or_else(missing)?;
        let Some(info) = shard.meta.info(name) else {
            let reason = format!("the index maps `{name}` to this file, which lacks it");
            return Err(format_error(&shard.path, reason));
        };
        if info.shape != expected {
            return Err(WeightsError::Shape {
                path: shard.path.clone(),
                tensor: name.to_string(),
                expected: expected.to_vec(),
                found: info.shape.clone(),
            });
        }
        let base = 8 + shard.header_len;
        let (start, end) = info.data_offsets;
        let Some(bytes) = shard.mmap.get(base + start..base + end) else {
            return Err(format_error(
                &shard.path,
                format!("`{name}` lies past the end"),
            ));
        };
        decode(bytes, info.dtype).ok_or_else(|| WeightsError::DType {
            path: shard.path.clone(),
            tensor: name.to_string(),
            dtype: format!("{:?}", info.dtype),
        })
    }
}

fn shards_path(shards: &[Shard], i: usize) -> String {
    shards
        .get(i)
        .map_or_else(String::new, |s| s.path.display().to_string())
}

/// Little-endian `bytes` of `dtype` as f32; `None` for a dtype Strata does not read.
fn decode(bytes: &[u8], dtype: Dtype) -> Option<Vec<f32>> {
    let two = |b: &[u8]| [b[0], b[1]];
    match dtype {
        Dtype::F32 => Some(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
        Dtype::F16 => Some(
            bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes(two(b)).to_f32())
                .collect(),
        ),
        Dtype::BF16 => Some(
            bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes(two(b)).to_f32())
                .collect(),
        ),
        _ => None,
    }
}

/// `data` encoded in `dtype` (round to nearest even for f16/bf16).
fn encode(data: &[f32], dtype: DType) -> Vec<u8> {
    match dtype {
        DType::F32 => data.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::F16 => data
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect(),
        DType::BF16 => data
            .iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
            .collect(),
    }
}

/// One tensor to write: its name, shape and f32 data (`data.len()` = product of `shape`).
pub struct TensorOut<'a> {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: &'a [f32],
}

/// An encoded tensor, as `safetensors` serializes it.
struct Encoded {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &Encoded {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Writes `tensors` to the safetensors file `path` in `dtype`, with HF's `format: pt` metadata.
/// The file is written beside `path` and renamed over it, so a mapped old file stays intact.
pub fn write(path: &Path, tensors: &[TensorOut<'_>], dtype: DType) -> Result<(), WeightsError> {
    let st_dtype = match dtype {
        DType::F32 => Dtype::F32,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
    };
    let mut encoded = Vec::with_capacity(tensors.len());
    for t in tensors {
        if t.shape.iter().product::<usize>() != t.data.len() {
            return Err(WeightsError::Shape {
                path: path.to_path_buf(),
                tensor: t.name.clone(),
                expected: t.shape.clone(),
                found: vec![t.data.len()],
            });
        }
        let bytes = encode(t.data, dtype);
        encoded.push((
            t.name.clone(),
            Encoded {
                dtype: st_dtype,
                shape: t.shape.clone(),
                bytes,
            },
        ));
    }
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let views = encoded.iter().map(|(n, e)| (n.as_str(), e));
    safetensors::serialize_to_file(views, Some(metadata), path).map_err(|e| match e {
        SafeTensorError::IoError(source) => WeightsError::Io {
            path: path.to_path_buf(),
            source,
        },
        other => format_error(path, other),
    })
}

#[cfg(test)]
#[path = "safetensors_io_tests.rs"]
mod tests;
