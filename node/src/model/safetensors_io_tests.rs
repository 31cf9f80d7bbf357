//! Tests of safetensors reading and writing.

use super::*;
use crate::model::rng::Rng;
use crate::model::testutil::TempDir;

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.uniform(4.0)).collect()
}

fn out<'a>(name: &str, shape: &[usize], data: &'a [f32]) -> TensorOut<'a> {
    TensorOut {
        name: name.to_string(),
        shape: shape.to_vec(),
        data,
    }
}

/// Writes `a` [3, 4] and `b` [5] in `dtype` to `file`, returns their data.
fn write_two(file: &Path, dtype: DType) -> (Vec<f32>, Vec<f32>) {
    let (a, b) = (values(12, 1), values(5, 2));
    let tensors = [out("a", &[3, 4], &a), out("b", &[5], &b)];
    write(file, &tensors, dtype).expect("write");
    (a, b)
}

#[test]
fn f32_round_trip_is_exact() {
    let tmp = TempDir::new("st-f32");
    let file = tmp.path().join("m.safetensors");
    let (a, b) = write_two(&file, DType::F32);
    let ck = Checkpoint::open(&file).expect("open");
    assert_eq!(ck.read("a", &[3, 4]).expect("a"), a);
    assert_eq!(ck.read("b", &[5]).expect("b"), b);
    let mut names: Vec<_> = ck.names().collect();
    names.sort();
    assert_eq!(names, ["a", "b"]);
}

#[test]
fn f16_and_bf16_round_trip_within_rounding() {
    // Half an ulp, relative: f16 has 10 mantissa bits, bf16 has 7.
    for (dtype, rel) in [(DType::F16, 2f32.powi(-11)), (DType::BF16, 2f32.powi(-8))] {
        let tmp = TempDir::new("st-half");
        let file = tmp.path().join("m.safetensors");
        let (a, _) = write_two(&file, dtype);
        let back = Checkpoint::open(&file).expect("open").read("a", &[3, 4]);
        for (x, y) in a.iter().zip(back.expect("a")) {
            // The absolute term covers f16 subnormals (spacing 2^-24).
            assert!(
                (x - y).abs() <= x.abs() * rel + 2f32.powi(-25),
                "{dtype:?}: {x} vs {y}"
            );
        }
        let bytes = std::fs::read(&file).expect("read back");
        let (_, meta) = SafeTensors::read_metadata(&bytes).expect("header");
        let stored = meta.info("a").expect("a is stored").dtype;
        assert_eq!(format!("{stored:?}"), format!("{dtype:?}"));
    }
}

#[test]
fn wrong_shape_names_file_tensor_and_shapes() {
    let tmp = TempDir::new("st-shape");
    let file = tmp.path().join("m.safetensors");
    write_two(&file, DType::F32);
    let err = Checkpoint::open(&file)
        .expect("open")
        .read("a", &[4, 3])
        .expect_err("shape");
    assert!(
        matches!(&err, WeightsError::Shape { tensor, expected, found, .. }
            if tensor == "a" && expected == &[4, 3] && found == &[3, 4])
    );
    assert!(err.to_string().contains("m.safetensors"), "{err}");
}

#[test]
fn missing_tensor_is_named() {
    let tmp = TempDir::new("st-missing");
    write_two(&tmp.path().join("m.safetensors"), DType::F32);
    let ck = Checkpoint::open(tmp.path()).expect("open dir");
    assert!(!ck.contains("c"));
    let err = ck.read("c", &[1]).expect_err("missing");
    assert!(matches!(&err, WeightsError::MissingTensor { tensor, .. } if tensor == "c"));
    assert!(err.to_string().contains("`c`"), "{err}");
}

#[test]
fn unsupported_dtype_is_named() {
    let tmp = TempDir::new("st-dtype");
    let file = tmp.path().join("m.safetensors");
    let bytes = [0u8; 8];
    let view = safetensors::tensor::TensorView::new(Dtype::I32, vec![2], &bytes).expect("view");
    safetensors::serialize_to_file([("ids", view)], None, &file).expect("write i32");
    let err = Checkpoint::open(&file)
        .expect("open")
        .read("ids", &[2])
        .expect_err("i32");
    assert!(matches!(&err, WeightsError::DType { tensor, .. } if tensor == "ids"));
    assert!(err.to_string().contains("I32") && err.to_string().contains("m.safetensors"));
}

#[test]
fn sharded_directory_with_and_without_index() {
    let tmp = TempDir::new("st-shards");
    let (a, b) = (values(6, 3), values(4, 4));
    let one = tmp.path().join("model-00001-of-00002.safetensors");
    let two = tmp.path().join("model-00002-of-00002.safetensors");
    write(&one, &[out("a", &[2, 3], &a)], DType::F32).expect("shard 1");
    write(&two, &[out("b", &[4], &b)], DType::BF16).expect("shard 2");
    let check = |ck: &Checkpoint| {
        assert_eq!(ck.read("a", &[2, 3]).expect("a"), a);
        assert_eq!(ck.read("b", &[4]).expect("b").len(), 4);
    };
    check(&Checkpoint::open(tmp.path()).expect("without index"));

    let index = serde_json::json!({
        "metadata": {"total_size": 32},
        "weight_map": {"a": "model-00001-of-00002.safetensors",
                       "b": "model-00002-of-00002.safetensors"},
    });
    std::fs::write(tmp.path().join(INDEX_FILE), index.to_string()).expect("index");
    // A stray file the index does not name is not opened.
    std::fs::write(tmp.path().join("consolidated.safetensors"), b"junk").expect("junk");
    check(&Checkpoint::open(tmp.path()).expect("with index"));
}

#[test]
fn index_naming_a_tensor_its_file_lacks_is_an_error() {
    let tmp = TempDir::new("st-badindex");
    write_two(&tmp.path().join("m.safetensors"), DType::F32);
    let index = serde_json::json!({"weight_map": {"a": "m.safetensors", "z": "m.safetensors"}});
    std::fs::write(tmp.path().join(INDEX_FILE), index.to_string()).expect("index");
    let ck = Checkpoint::open(tmp.path()).expect("open");
    let err = ck.read("z", &[1]).expect_err("z not in file");
    assert!(matches!(err, WeightsError::Format { .. }), "{err}");
}

#[test]
fn duplicate_tensor_across_files_is_an_error() {
    let tmp = TempDir::new("st-dup");
    write_two(&tmp.path().join("x.safetensors"), DType::F32);
    write_two(&tmp.path().join("y.safetensors"), DType::F32);
    let err = Checkpoint::open(tmp.path()).err().expect("duplicate");
    assert!(err.to_string().contains("x.safetensors"), "{err}");
}

#[test]
fn bad_files_and_empty_dirs_are_named() {
    let tmp = TempDir::new("st-bad");
    let err = Checkpoint::open(tmp.path()).err().expect("empty dir");
    assert!(matches!(err, WeightsError::NoCheckpoint { .. }));
    let file = tmp.path().join("m.safetensors");
    std::fs::write(&file, b"not a safetensors file").expect("write junk");
    let err = Checkpoint::open(&file).err().expect("junk");
    assert!(matches!(err, WeightsError::Format { .. }));
    assert!(err.to_string().contains("m.safetensors"));
    let gone = tmp.path().join("gone.safetensors");
    assert!(matches!(
        Checkpoint::open(&gone),
        Err(WeightsError::Io { .. })
    ));
}

#[test]
fn writing_data_of_the_wrong_length_is_refused() {
    let tmp = TempDir::new("st-len");
    let data = values(5, 5);
    let err = write(
        &tmp.path().join("m.safetensors"),
        &[out("a", &[2, 3], &data)],
        DType::F32,
    );
    assert!(matches!(err, Err(WeightsError::Shape { .. })));
}
