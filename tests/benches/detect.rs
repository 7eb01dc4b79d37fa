//! The cost of one frame on this CPU: JPEG decode + resize/normalize + inference + decoding
//! and NMS with the shipped NanoDet model, next to plain ONNX Runtime (PyPI's
//! `onnxruntime`, same library version, same model, same input tensor, same thread count) in
//! the same run.
//!
//! `cargo bench -p sightline-tests --bench detect`; `SIGHTLINE_BENCH_FRAMES` (default 100)
//! frames per side, `SIGHTLINE_BENCH_THREADS` (default 2) intra-op threads. Needs
//! `ORT_DYLIB_PATH` and python3 with onnxruntime and numpy (scripts/test.sh installs them).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use sightline_edge_agent::config::ModelConfig;
use sightline_edge_agent::detect::{Detector, preprocess};

/// ONNX Runtime from Python, timing `session.run` alone on the tensor the agent made.
const PYTHON: &str = r#"
import json, sys, time
import numpy as np, onnxruntime as ort
model, tensor, frames, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
options = ort.SessionOptions()
options.intra_op_num_threads = threads
session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
x = np.fromfile(tensor, dtype=np.float32).reshape(1, 3, 416, 416)
name = session.get_inputs()[0].name
for _ in range(5):
    session.run(None, {name: x})
times = []
for _ in range(frames):
    t = time.perf_counter()
    session.run(None, {name: x})
    times.append((time.perf_counter() - t) * 1000)
times.sort()
print(json.dumps({"p50": times[len(times) // 2], "mean": sum(times) / len(times), "version": ort.__version__}))
"#;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// p50 and mean of a set of durations, in ms.
fn summary(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let mean = samples.iter().map(|d| ms(*d)).sum::<f64>() / samples.len().max(1) as f64;
    (ms(samples[samples.len() / 2]), mean)
}

fn main() -> anyhow::Result<()> {
    let frames = env("SIGHTLINE_BENCH_FRAMES", 100);
    let threads = env("SIGHTLINE_BENCH_THREADS", 2);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let model = repo.join("models/nanodet_coco_416.onnx");
    let detector = Detector::load(&ModelConfig {
        path: model.clone(),
        labels: repo.join("models/coco.names"),
        intra_threads: threads,
        ..ModelConfig::default()
    })?;

    // A 720p camera frame as a camera sends it: JPEG.
    let picture = image::open(repo.join("tests/fixtures/images/dog.jpg"))?.to_rgb8();
    let frame = image::imageops::resize(&picture, 1280, 720, image::imageops::FilterType::Triangle);
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 85).encode_image(&frame)?;

    for _ in 0..5 {
        detector.detect(&frame)?;
    }
    let (mut decode, mut pre, mut infer, mut post, mut total) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut found = 0;
    for _ in 0..frames {
        let started = Instant::now();
        let image = image::load_from_memory_with_format(&jpeg, image::ImageFormat::Jpeg)?.to_rgb8();
        decode.push(started.elapsed());
        let (detections, timings) = detector.detect(&image)?;
        total.push(started.elapsed());
        found = detections.len();
        pre.push(timings.preprocess);
        infer.push(timings.inference);
        post.push(timings.postprocess);
    }

    // The same tensor for Python.
    let mut tensor = vec![0.0f32; 3 * 416 * 416];
    preprocess(&frame, 416, 416, &mut tensor);
    let mut file = tempfile::NamedTempFile::new()?;
    for v in &tensor {
        file.write_all(&v.to_le_bytes())?;
    }
    file.flush()?;
    let output = std::process::Command::new("python3")
        .arg("-c")
        .arg(PYTHON)
        .arg(&model)
        .arg(file.path())
        .arg(frames.to_string())
        .arg(threads.to_string())
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "python onnxruntime failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let python: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let python_p50 = python["p50"].as_f64().unwrap_or(f64::NAN);

    let rows = [
        ("JPEG decode 1280x720", summary(decode)),
        ("resize + normalize to 416x416", summary(pre)),
        ("inference (ort, Rust)", summary(infer.clone())),
        ("decode outputs + NMS", summary(post)),
        ("whole frame", summary(total.clone())),
    ];
    println!(
        "detect: {frames} frames of 1280x720 JPEG, {threads} intra-op threads, {found} detections per frame"
    );
    println!("  {:<32} {:>9} {:>9}", "stage", "p50 ms", "mean ms");
    for (name, (p50, mean)) in rows {
        println!("  {name:<32} {p50:>9.2} {mean:>9.2}");
    }
    println!(
        "  {:<32} {:>9.2} {:>9.2}   (onnxruntime {})",
        "inference (Python onnxruntime)",
        python_p50,
        python["mean"].as_f64().unwrap_or(f64::NAN),
        python["version"].as_str().unwrap_or("?")
    );
    let (infer_p50, _) = summary(infer);
    let (total_p50, _) = summary(total);
    println!(
        "  ratio inference Rust / Python: {:.2}; whole frame / Python inference: {:.2}; frames/s per camera at p50: {:.1}",
        infer_p50 / python_p50,
        total_p50 / python_p50,
        1000.0 / total_p50
    );
    Ok(())
}
