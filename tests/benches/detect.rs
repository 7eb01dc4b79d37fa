//! The cost of one frame on this CPU: JPEG decode (scaled, as the agent does; the full-size
//! decode it replaced runs beside it as the baseline) + resize/normalize + inference +
//! decoding and NMS with the shipped NanoDet model, next to plain ONNX Runtime (PyPI's
//! `onnxruntime`, same library version, same model, same input tensor, same thread count) in
//! the same run.
//!
//! Then the track path (issue 16) in the same run: a camera panning over the test pictures,
//! each frame decoded and detected, then tracked the way the agent does (matching, the
//! track's bookkeeping, its records, and the best frames held until a record renders and
//! writes the snapshot), so the cost of a frame with and without tracks is measured on the
//! same frames.
//!
//! `cargo bench -p sightline-tests --bench detect`; `SIGHTLINE_BENCH_FRAMES` (default 100)
//! frames per side, `SIGHTLINE_BENCH_THREADS` (default 2) intra-op threads,
//! `SIGHTLINE_BENCH_PAN_FRAMES` (default 40) frames of pan per picture. Needs
//! `ORT_DYLIB_PATH` and python3 with onnxruntime and numpy (scripts/test.sh installs them).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use sightline_edge_agent::capture::jpeg::{DecodeSize, JpegDecoder};
use sightline_edge_agent::config::{ModelConfig, MotionConfig, SnapshotConfig, TrackerConfig};
use sightline_edge_agent::detect::{Detector, preprocess};
use sightline_edge_agent::motion::MotionGate;
use sightline_edge_agent::snapshot::{self, BestFrame, BestFrames};
use sightline_edge_agent::track::{Settings, Tracker};
use sightline_shared::Detection;

/// ONNX Runtime from Python, timing `session.run` alone on the tensor the agent made: it
/// prints its version once ready, then for each line `N` on stdin runs `N` times and prints
/// their times (ms) as a JSON list, so that the Rust frames and Python's runs alternate.
const PYTHON: &str = r#"
import json, sys, time
import numpy as np, onnxruntime as ort
model, tensor, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
options = ort.SessionOptions()
options.intra_op_num_threads = threads
session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
x = np.fromfile(tensor, dtype=np.float32).reshape(1, 3, 416, 416)
name = session.get_inputs()[0].name
for _ in range(5):
    session.run(None, {name: x})
print(ort.__version__, flush=True)
for line in sys.stdin:
    times = []
    for _ in range(int(line)):
        t = time.perf_counter()
        session.run(None, {name: x})
        times.append((time.perf_counter() - t) * 1000)
    print(json.dumps(times), flush=True)
"#;

/// Frames measured between two turns of Python's.
const TURN: usize = 10;

/// The Python side, running.
struct Python {
    child: std::process::Child,
    output: std::io::BufReader<std::process::ChildStdout>,
    version: String,
    times: Vec<Duration>,
}

impl Python {
    fn start(model: &Path, tensor: &Path, threads: usize) -> anyhow::Result<Self> {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new("python3")
            .arg("-c")
            .arg(PYTHON)
            .arg(model)
            .arg(tensor)
            .arg(threads.to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start python3 (for onnxruntime): {e}"))?;
        let mut output =
            std::io::BufReader::new(child.stdout.take().expect("python's stdout is piped"));
        let mut version = String::new();
        output.read_line(&mut version)?;
        anyhow::ensure!(
            !version.trim().is_empty(),
            "python onnxruntime did not start (needs python3 with onnxruntime and numpy)"
        );
        Ok(Self {
            child,
            output,
            version: version.trim().to_owned(),
            times: Vec::new(),
        })
    }

    /// `n` inferences on Python's side, their times kept.
    fn turn(&mut self, n: usize) -> anyhow::Result<()> {
        use std::io::BufRead as _;
        let stdin = self.child.stdin.as_mut().expect("python's stdin is piped");
        writeln!(stdin, "{n}")?;
        stdin.flush()?;
        let mut line = String::new();
        if self.output.read_line(&mut line)? == 0 {
            anyhow::bail!("python onnxruntime exited (its error is above)");
        }
        let times: Vec<f64> = serde_json::from_str(&line)
            .map_err(|e| anyhow::anyhow!("python onnxruntime answered {line:?}: {e}"))?;
        self.times.extend(
            times
                .into_iter()
                .map(|ms| Duration::from_secs_f64(ms / 1000.0)),
        );
        Ok(())
    }
}

impl Drop for Python {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

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

    // The agent decodes at the smallest scale that keeps the model's input and a default
    // snapshot (capture/jpeg.rs); the full-size decode it replaced runs beside it, frame by
    // frame, as the baseline.
    let size = DecodeSize::for_camera(
        detector.input_size(),
        Some(SnapshotConfig::default().max_width),
    );
    let mut decoder = JpegDecoder::new(size)?;
    let scaled = decoder.decode(&jpeg)?;
    // The same tensor for Python, whose runs take turns with the frames below.
    let mut tensor = vec![0.0f32; 3 * 416 * 416];
    preprocess(&scaled, 416, 416, &mut tensor);
    let mut file = tempfile::NamedTempFile::new()?;
    for v in &tensor {
        file.write_all(&v.to_le_bytes())?;
    }
    file.flush()?;
    let mut python = Python::start(&model, file.path(), threads)?;

    for _ in 0..5 {
        detector.detect(&frame)?;
        detector.detect(&scaled)?;
    }
    let costs = frame_costs(&detector, &mut decoder, &jpeg, frames, &mut python)?;
    // The same picture as UVC cameras send MJPEG: 4:2:2 chroma (the frame above is 4:4:4,
    // as the image crate encodes, with twice the chroma to decode).
    let mut camera_jpeg = Vec::new();
    let mut encoder = jpeg_encoder::Encoder::new(&mut camera_jpeg, 85);
    encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::R_4_2_2);
    encoder.encode(frame.as_raw(), 1280, 720, jpeg_encoder::ColorType::Rgb)?;
    let camera_costs = frame_costs(&detector, &mut decoder, &camera_jpeg, frames, &mut python)?;
    let (python_p50, python_mean) = summary(std::mem::take(&mut python.times));
    let idle = idle_costs(&mut decoder, &camera_jpeg, frames)?;

    let (w, h) = scaled.dimensions();
    let Costs {
        decode,
        pre,
        infer,
        post,
        total,
        full_decode,
        full_pre,
        full_total,
        found,
    } = costs;
    let (total_p50, full_p50) = (summary(total.clone()).0, summary(full_total.clone()).0);
    let rows = [
        (format!("JPEG decode 1280x720 to {w}x{h}"), summary(decode)),
        ("resize + normalize to 416x416".into(), summary(pre)),
        ("inference (ort, Rust)".into(), summary(infer.clone())),
        ("decode outputs + NMS".into(), summary(post)),
        ("whole frame".into(), summary(total)),
        (
            "baseline: full-size JPEG decode".into(),
            summary(full_decode),
        ),
        ("baseline: resize + normalize".into(), summary(full_pre)),
        ("baseline: whole frame".into(), summary(full_total)),
        (
            "4:2:2 frame: JPEG decode".into(),
            summary(camera_costs.decode),
        ),
        (
            "4:2:2 frame: whole frame".into(),
            summary(camera_costs.total.clone()),
        ),
        (
            "4:2:2 frame: baseline whole frame".into(),
            summary(camera_costs.full_total.clone()),
        ),
    ];
    println!(
        "detect: {frames} frames of 1280x720 JPEG (4:4:4, {} kB; 4:2:2, {} kB), {threads} intra-op threads, {found} detections per frame (the same at full size)",
        jpeg.len() / 1000,
        camera_jpeg.len() / 1000
    );
    println!("  {:<36} {:>9} {:>9}", "stage", "p50 ms", "mean ms");
    for (name, (p50, mean)) in rows {
        println!("  {name:<36} {p50:>9.2} {mean:>9.2}");
    }
    println!(
        "  {:<36} {:>9.2} {:>9.2}   (onnxruntime {}, taking turns with the frames above)",
        "inference (Python onnxruntime)", python_p50, python_mean, python.version
    );
    let (infer_p50, _) = summary(infer);
    println!(
        "  ratio inference Rust / Python: {:.2}; whole frame / Python inference: {:.2} (baseline {:.2}; 4:2:2 {:.2}, baseline {:.2}); whole frame / Rust inference: {:.2}; frames/s per camera at p50: {:.1} (baseline {:.1})",
        infer_p50 / python_p50,
        total_p50 / python_p50,
        full_p50 / python_p50,
        summary(camera_costs.total).0 / python_p50,
        summary(camera_costs.full_total).0 / python_p50,
        total_p50 / infer_p50,
        1000.0 / total_p50,
        1000.0 / full_p50
    );
    let (idle_p50, idle_full_p50) = (summary(idle.0).0, summary(idle.1).0);
    println!(
        "  idle camera (4:2:2 frame decoded, motion scored, no detection): {idle_p50:.2} ms per frame (baseline {idle_full_p50:.2}); at 10 fps {:.1} % of a core (baseline {:.1} %)",
        idle_p50 * 10.0 / 1000.0 * 100.0,
        idle_full_p50 * 10.0 / 1000.0 * 100.0
    );
    track_path(&detector, &repo)
}

/// A still camera's frames: decoded and scored by the motion gate, which keeps them from the
/// detector. The agent's scaled decode and the full-size one, frame by frame.
fn idle_costs(
    decoder: &mut JpegDecoder,
    jpeg: &[u8],
    frames: usize,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let (mut gate, mut full_gate) = (
        MotionGate::new(MotionConfig::default()),
        MotionGate::new(MotionConfig::default()),
    );
    let (mut scaled, mut full) = (Vec::new(), Vec::new());
    for _ in 0..frames {
        let started = Instant::now();
        let image = image::load_from_memory_with_format(jpeg, image::ImageFormat::Jpeg)?.to_rgb8();
        let score = full_gate.score(&image);
        // A still camera: no motion after the first frame.
        anyhow::ensure!(
            full.is_empty() || !full_gate.is_motion(score),
            "motion {score}"
        );
        full.push(started.elapsed());

        let started = Instant::now();
        let image = decoder.decode(jpeg)?;
        let score = gate.score(&image);
        anyhow::ensure!(
            scaled.is_empty() || !gate.is_motion(score),
            "motion {score}"
        );
        scaled.push(started.elapsed());
    }
    Ok((scaled, full))
}

/// Per-frame stage times of the agent's path (scaled decode, detect) and of the full-size
/// decode it replaced (the image crate's, then the same detector), frame by frame.
#[derive(Default)]
struct Costs {
    decode: Vec<Duration>,
    pre: Vec<Duration>,
    infer: Vec<Duration>,
    post: Vec<Duration>,
    total: Vec<Duration>,
    full_decode: Vec<Duration>,
    full_pre: Vec<Duration>,
    full_total: Vec<Duration>,
    /// Objects found per frame.
    found: usize,
}

fn frame_costs(
    detector: &Detector,
    decoder: &mut JpegDecoder,
    jpeg: &[u8],
    frames: usize,
    python: &mut Python,
) -> anyhow::Result<Costs> {
    let mut costs = Costs::default();
    for i in 0..frames {
        if i % TURN == 0 {
            python.turn(TURN.min(frames - i))?;
        }
        let started = Instant::now();
        let image = image::load_from_memory_with_format(jpeg, image::ImageFormat::Jpeg)?.to_rgb8();
        costs.full_decode.push(started.elapsed());
        let (full_found, timings) = detector.detect(&image)?;
        costs.full_total.push(started.elapsed());
        costs.full_pre.push(timings.preprocess);

        let started = Instant::now();
        let image = decoder.decode(jpeg)?;
        costs.decode.push(started.elapsed());
        let (found, timings) = detector.detect(&image)?;
        costs.total.push(started.elapsed());
        costs.pre.push(timings.preprocess);
        costs.infer.push(timings.inference);
        costs.post.push(timings.postprocess);
        // The smaller decode must not change what is found.
        anyhow::ensure!(
            found.len() == full_found.len()
                && found
                    .iter()
                    .zip(&full_found)
                    .all(|(a, b)| a.class_id == b.class_id
                        && sightline_edge_agent::detect::decode::iou(&a.bbox, &b.bbox) > 0.9),
            "the scaled decode found {found:?}, the full-size one {full_found:?}"
        );
        costs.found = found.len();
    }
    Ok(costs)
}

/// Frames of a camera panning over each test picture (a window of 80 % of it sliding from
/// the top left to the bottom right, scaled to 1280x720), as JPEG, 100 ms apart.
fn panning_frames(repo: &Path, steps: u32) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut pictures: Vec<_> = std::fs::read_dir(repo.join("tests/fixtures/images"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    pictures.sort();
    let mut frames = Vec::new();
    for picture in pictures {
        let picture = image::open(&picture)?.to_rgb8();
        let (w, h) = (picture.width() * 4 / 5, picture.height() * 4 / 5);
        let span = steps.saturating_sub(1).max(1);
        for step in 0..steps {
            let (x, y) = (
                (picture.width() - w) * step / span,
                (picture.height() - h) * step / span,
            );
            let window = image::imageops::crop_imm(&picture, x, y, w, h).to_image();
            let frame =
                image::imageops::resize(&window, 1280, 720, image::imageops::FilterType::Triangle);
            let mut jpeg = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 85)
                .encode_image(&frame)?;
            frames.push(jpeg);
        }
    }
    Ok(frames)
}

/// A frame's cost without and with the track path, on the same frames, in one run.
fn track_path(detector: &Detector, repo: &Path) -> anyhow::Result<()> {
    let steps = env("SIGHTLINE_BENCH_PAN_FRAMES", 40) as u32;
    let frames = panning_frames(repo, steps)?;
    let data = tempfile::tempdir()?;
    let snapshots = SnapshotConfig::default();
    let mut decoder = JpegDecoder::new(DecodeSize::for_camera(
        detector.input_size(),
        Some(snapshots.max_width),
    ))?;
    let mut next_id = 0;
    let mut tracker = Tracker::new(
        Settings::from(&TrackerConfig::default()),
        "edge-bench",
        "pan",
        Vec::new(),
        Box::new(move || {
            next_id += 1;
            next_id
        }),
    );
    let (mut frame_cost, mut matching, mut writing) = (Vec::new(), Vec::new(), Vec::new());
    let mut event_cost = Vec::new();
    let mut events = 0;
    let (mut records, mut objects, mut record_count) = (Vec::new(), 0, 0);
    let mut held = BestFrames::default();
    let written = std::cell::Cell::new(0);
    let write = |best: &BestFrame, track_id: u64, started_ms: i64| -> anyhow::Result<()> {
        let object = [best.detection(track_id, |c| detector.label(c))];
        let jpeg = snapshot::render(&best.image, &object, &snapshots)?;
        snapshot::save(
            data.path(),
            &snapshot::track_path(track_id, started_ms),
            &jpeg,
        )?;
        written.set(written.get() + 1);
        Ok(())
    };
    for round in 0..2 {
        for (i, jpeg) in frames.iter().enumerate() {
            let now_ms = 1_795_000_000_000 + (round * frames.len() + i) as i64 * 100;
            let started = Instant::now();
            let image = std::sync::Arc::new(decoder.decode(jpeg)?);
            let (found, _) = detector.detect(&image)?;
            let detected = started.elapsed();
            // The track path: matching and bookkeeping, the records due...
            let started = Instant::now();
            let assignments = tracker.update(&found, |c| detector.label(c), now_ms, &mut records);
            let matched = started.elapsed();
            // ...each record's snapshot when a better frame came since its last one, and
            // the best frames held meanwhile, as the camera does.
            let started = Instant::now();
            for record in records.drain(..) {
                record_count += usize::from(round == 1);
                if let Some(best) = held.take(record.track_id) {
                    write(&best, record.track_id, record.started_at.as_millis())?;
                }
            }
            for (f, a) in found.iter().zip(&assignments).filter(|(_, a)| a.best) {
                held.hold(a.track_id, &image, *f, now_ms);
            }
            while let Some((track_id, best)) = held.overflow() {
                write(
                    &best,
                    track_id,
                    tracker.started_ms(track_id).unwrap_or(now_ms),
                )?;
            }
            let wrote = started.elapsed();
            // With or without tracks, a frame with a new object makes an event and its
            // snapshot (every object boxed).
            let started = Instant::now();
            if assignments.iter().any(|a| a.new) {
                let boxed: Vec<Detection> = found
                    .iter()
                    .zip(&assignments)
                    .map(|(f, a)| f.detection(detector.label(f.class_id), a.track_id, Vec::new()))
                    .collect();
                let jpeg = snapshot::render(&image, &boxed, &snapshots)?;
                snapshot::save(data.path(), Path::new(&format!("event-{i}.jpg")), &jpeg)?;
                events += usize::from(round == 1);
            }
            let evented = started.elapsed();
            // The first round warms up.
            if round == 1 {
                objects += found.len();
                frame_cost.push(detected);
                event_cost.push(evented);
                matching.push(matched);
                writing.push(wrote);
            }
        }
        // The camera stops: the last tracks' final records and snapshots. After the
        // warm-up round, unmeasured, so the measured round has exactly its own tracks;
        // after it, counted in its last frame.
        let started = Instant::now();
        let end_ms = 1_795_000_000_000 + ((round + 1) * frames.len()) as i64 * 100;
        tracker.close(end_ms, &mut records);
        for record in records.drain(..) {
            record_count += usize::from(round == 1);
            if let Some(best) = held.take(record.track_id) {
                write(&best, record.track_id, record.started_at.as_millis())?;
            }
        }
        if round == 1
            && let Some(last) = writing.last_mut()
        {
            *last += started.elapsed();
        }
        if round == 0 {
            written.set(0);
        }
    }
    let written = written.get();
    let n = frame_cost.len();
    let without: Vec<Duration> = (0..n).map(|i| frame_cost[i] + event_cost[i]).collect();
    let with: Vec<Duration> = (0..n)
        .map(|i| without[i] + matching[i] + writing[i])
        .collect();
    let mean = |v: &[Duration]| v.iter().map(|d| ms(*d)).sum::<f64>() / v.len().max(1) as f64;
    let (detect_mean, without_mean) = (mean(&frame_cost), mean(&without));
    let track_mean = mean(&matching) + mean(&writing);
    println!(
        "track path: {n} frames of a camera panning over {} pictures ({:.2} objects per frame on average, {events} frames with a new object), {record_count} track records, {written} best-frame snapshots",
        n / steps.max(1) as usize,
        objects as f64 / n.max(1) as f64
    );
    println!("  {:<44} {:>9} {:>9}", "per frame", "p50 ms", "mean ms");
    for (name, samples) in [
        ("decode + detect", frame_cost),
        ("an event and its snapshot for a new object", event_cost),
        ("without tracks: the two above", without),
        ("tracker: matching, bookkeeping, records", matching.clone()),
        ("best-frame snapshots: render + write", writing.clone()),
        ("with tracks: all of the above", with),
    ] {
        let (p50, mean) = summary(samples);
        println!("  {name:<44} {p50:>9.3} {mean:>9.3}");
    }
    println!(
        "  the track path costs {:.2} % of a frame's CPU without tracks ({:.2} % of decode + detect alone; tracker {:.3} %, best-frame snapshots {:.2} %)",
        100.0 * track_mean / without_mean,
        100.0 * track_mean / detect_mean,
        100.0 * mean(&matching) / without_mean,
        100.0 * mean(&writing) / without_mean,
    );
    Ok(())
}
