//! Object detection with ONNX Runtime, loaded at run time from a library file.
//!
//! A [`Detector`] owns one ONNX Runtime session (behind a mutex: a session runs one frame
//! at a time) and the model's post-processing. Callers run it on their own threads, never on
//! the async runtime: a frame takes tens of milliseconds.

pub mod decode;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use image::RgbImage;
use ort::session::Session;
use ort::value::TensorRef;
use sha2::Digest;
use sightline_shared::ModelInfo;

use crate::config::{DecoderKind, ModelConfig};
pub use decode::Found;

/// Most detections kept per frame, after NMS.
pub const MAX_DETECTIONS: usize = 100;

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// The ONNX Runtime library is missing or unusable.
    #[error("{0}")]
    Runtime(String),
    /// The model or labels file is missing, unreadable or not what the config says.
    #[error("{field}: {problem}")]
    Model {
        field: &'static str,
        problem: String,
    },
    /// Inference or decoding failed on a frame.
    #[error("inference failed: {0}")]
    Inference(String),
}

fn model_error(field: &'static str, problem: impl std::fmt::Display) -> DetectError {
    DetectError::Model {
        field,
        problem: problem.to_string(),
    }
}

/// Where the ONNX Runtime library is looked for when neither `model.onnxruntime_library`
/// nor `ORT_DYLIB_PATH` names it.
pub const LIBRARY_PLACES: &[&str] = &[
    "/usr/lib/sightline/libonnxruntime.so",
    "/usr/local/lib/libonnxruntime.so",
    "/usr/lib/libonnxruntime.so",
];

/// The process's one ONNX Runtime environment (ONNX Runtime allows one per process).
static ENVIRONMENT: OnceLock<Result<(PathBuf, ort::environment::Environment), String>> =
    OnceLock::new();

/// Loads ONNX Runtime from `explicit`, else `ORT_DYLIB_PATH`, else [`LIBRARY_PLACES`]; the
/// first call decides for the whole process.
pub fn runtime(
    explicit: Option<&Path>,
) -> Result<&'static ort::environment::Environment, DetectError> {
    let loaded = ENVIRONMENT.get_or_init(|| {
        let path = library_path(explicit)?;
        let env = ort::init_from(&path)
            .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", path.display()))?
            .with_name("sightline-edge")
            .build()
            .map_err(|e| format!("cannot start ONNX Runtime from {}: {e}", path.display()))?;
        tracing::info!(library = %path.display(), "ONNX Runtime loaded");
        Ok((path, env))
    });
    match loaded {
        Ok((path, env)) => {
            if let Some(wanted) = explicit.filter(|w| *w != path) {
                tracing::warn!(wanted = %wanted.display(), loaded = %path.display(), "ONNX Runtime is already loaded from another file; using it");
            }
            Ok(env)
        }
        Err(problem) => Err(DetectError::Runtime(problem.clone())),
    }
}

fn library_path(explicit: Option<&Path>) -> Result<PathBuf, String> {
    let hint = "ONNX Runtime 1.31 or newer is needed: `pip install onnxruntime==1.31.1` ships \
                onnxruntime/capi/libonnxruntime.so.1.31.1; point model.onnxruntime_library or \
                ORT_DYLIB_PATH at it, or copy it to /usr/lib/sightline/libonnxruntime.so";
    // A place named explicitly must exist; only the defaults are searched.
    let named = explicit
        .map(|p| ("model.onnxruntime_library", p.to_owned()))
        .or_else(|| {
            std::env::var_os("ORT_DYLIB_PATH")
                .filter(|p| !p.is_empty())
                .map(|p| ("ORT_DYLIB_PATH", PathBuf::from(p)))
        });
    if let Some((source, path)) = named {
        return match path.is_file() {
            true => Ok(path),
            false => Err(format!(
                "{source}: {} does not exist. {hint}",
                path.display()
            )),
        };
    }
    LIBRARY_PLACES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "ONNX Runtime library not found: model.onnxruntime_library and ORT_DYLIB_PATH \
                 are unset and none of {} exists. {hint}",
                LIBRARY_PLACES.join(", ")
            )
        })
}

/// Time spent on one frame, by stage.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// Resize and normalize into the input tensor.
    pub preprocess: Duration,
    /// `Session::run`.
    pub inference: Duration,
    /// Decoding and NMS.
    pub postprocess: Duration,
}

/// A loaded model with its labels and post-processing.
#[derive(Debug)]
pub struct Detector {
    session: Mutex<Session>,
    input_name: String,
    width: u32,
    height: u32,
    decoder: DecoderKind,
    labels: Vec<String>,
    score_threshold: f32,
    nms_iou: f32,
    info: ModelInfo,
}

impl Detector {
    /// Loads the model and labels the config names, checking that they fit together.
    pub fn load(config: &ModelConfig) -> Result<Self, DetectError> {
        let env = runtime(config.onnxruntime_library.as_deref())?;
        let labels = read_labels(&config.labels)?;
        let mut bytes = Vec::new();
        std::fs::File::open(&config.path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| model_error("model.path", format!("{}: {e}", config.path.display())))?;
        let digest = sha2::Sha256::digest(&bytes);
        let version: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
        let unloadable = |e: &dyn std::fmt::Display| {
            model_error(
                "model.path",
                format!(
                    "{} is not a loadable ONNX model: {e}",
                    config.path.display()
                ),
            )
        };
        let mut builder = Session::builder(env)
            .map_err(|e| unloadable(&e))?
            .with_intra_threads(config.intra_threads)
            .map_err(|e| model_error("model.intra_threads", e))?;
        let session = builder
            .commit_from_memory(&bytes)
            .map_err(|e| unloadable(&e))?;
        let input = session
            .inputs()
            .first()
            .ok_or_else(|| model_error("model.path", "the model has no input"))?;
        let dims: Vec<i64> = input
            .dtype()
            .tensor_shape()
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        let (width, height) = match (dims.as_slice(), config.input_width, config.input_height) {
            (_, Some(w), Some(h)) => (w, h),
            ([_, 3, h, w], _, _) if *h > 0 && *w > 0 => (*w as u32, *h as u32),
            _ => {
                return Err(model_error(
                    "model.input_width",
                    format!(
                        "input {} has shape {dims:?} (dynamic or not [1, 3, H, W]): set \
                         model.input_width and model.input_height",
                        input.name()
                    ),
                ));
            }
        };
        let name = config
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        let detector = Self {
            input_name: input.name().to_owned(),
            session: Mutex::new(session),
            width,
            height,
            decoder: config.decoder,
            labels,
            score_threshold: config.score_threshold,
            nms_iou: config.nms_iou,
            info: ModelInfo { name, version },
        };
        // One blank frame proves the outputs fit the decoder and the labels, at start-up
        // rather than on the first frame with motion.
        detector
            .detect(&RgbImage::new(width, height))
            .map_err(|e| model_error("model.decoder", e))?;
        Ok(detector)
    }

    /// The model's name (file stem) and version (the first 12 hex digits of its SHA-256).
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The label of a class, or `class_N` past the end of the labels file.
    pub fn label(&self, class_id: u32) -> String {
        self.labels
            .get(class_id as usize)
            .cloned()
            .unwrap_or_else(|| format!("class_{class_id}"))
    }

    /// Every label the model knows.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// The model's input size.
    pub fn input_size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// Finds objects in a frame: boxes above the score threshold after NMS, best first.
    pub fn detect(&self, frame: &RgbImage) -> Result<(Vec<Found>, Timings), DetectError> {
        let mut timings = Timings::default();
        let started = Instant::now();
        let mut input = vec![0.0f32; 3 * self.width as usize * self.height as usize];
        preprocess(frame, self.width, self.height, &mut input);
        timings.preprocess = started.elapsed();
        let infer = Instant::now();
        let mut session = self
            .session
            .lock()
            .map_err(|_| DetectError::Inference("a previous run panicked".into()))?;
        let tensor = TensorRef::from_array_view((
            [1usize, 3, self.height as usize, self.width as usize],
            input.as_slice(),
        ))
        .map_err(|e| DetectError::Inference(e.to_string()))?;
        let outputs = session
            .run(vec![(self.input_name.as_str(), tensor)])
            .map_err(|e| DetectError::Inference(e.to_string()))?;
        timings.inference = infer.elapsed();
        let post = Instant::now();
        let names: Vec<String> = outputs.keys().map(|k| k.to_string()).collect();
        let mut tensors = Vec::with_capacity(names.len());
        for name in &names {
            let (shape, data) = outputs[name.as_str()]
                .try_extract_tensor::<f32>()
                .map_err(|e| DetectError::Inference(format!("output {name}: {e}")))?;
            tensors.push((name.as_str(), shape.to_vec(), data));
        }
        let views: Vec<decode::Output<'_>> = tensors
            .iter()
            .map(|(name, shape, data)| decode::Output { name, shape, data })
            .collect();
        let classes = self.labels.len();
        let (w, h, t) = (self.width, self.height, self.score_threshold);
        let found = match self.decoder {
            DecoderKind::Nanodet => decode::nanodet(&views, classes, w, h, t),
            DecoderKind::Yolov5 => decode::yolo(decode::YoloLayout::V5, &views, classes, w, h, t),
            DecoderKind::Yolov8 => decode::yolo(decode::YoloLayout::V8, &views, classes, w, h, t),
        }
        .map_err(DetectError::Inference)?;
        let found = decode::nms(found, self.nms_iou, MAX_DETECTIONS);
        timings.postprocess = post.elapsed();
        Ok((found, timings))
    }
}

/// Reads a labels file: one class name per line, in the model's class order.
pub fn read_labels(path: &Path) -> Result<Vec<String>, DetectError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| model_error("model.labels", format!("{}: {e}", path.display())))?;
    let labels: Vec<String> = text.lines().map(|l| l.trim().to_owned()).collect();
    let labels: Vec<String> = match labels.iter().rposition(|l| !l.is_empty()) {
        Some(last) => labels[..=last].to_vec(),
        None => Vec::new(),
    };
    if let Some(i) = labels
        .iter()
        .position(|l| !sightline_shared::validate::is_label(l))
    {
        return Err(model_error(
            "model.labels",
            format!(
                "{} line {}: {:?} is not a valid label",
                path.display(),
                i + 1,
                labels[i]
            ),
        ));
    }
    if labels.is_empty() {
        return Err(model_error(
            "model.labels",
            format!("{} has no labels", path.display()),
        ));
    }
    Ok(labels)
}

/// Resizes `frame` (bilinear) into a `[3, height, width]` planar RGB tensor scaled to 0..1.
///
/// Separable: each source row the output needs is resized across once (into planar rows,
/// kept while consecutive output rows share them), then each output row is a blend of two
/// such rows, plane by plane, which the compiler vectorizes.
pub fn preprocess(frame: &RgbImage, width: u32, height: u32, out: &mut [f32]) {
    let (fw, fh) = (frame.width() as usize, frame.height() as usize);
    let (w, h) = (width as usize, height as usize);
    assert_eq!(out.len(), 3 * w * h, "tensor size");
    if fw == 0 || fh == 0 {
        out.fill(0.0);
        return;
    }
    let pixels = frame.as_raw();
    // Source column pairs and weights, once per output column.
    let columns: Vec<(usize, usize, f32)> = (0..w)
        .map(|x| {
            let sx = source_position(x, fw, w);
            let x0 = sx as usize;
            (x0 * 3, (x0 + 1).min(fw - 1) * 3, sx - x0 as f32)
        })
        .collect();
    const SCALE: f32 = 1.0 / 255.0;
    // Source row `sy` resized across, as three planes of `w`.
    let across = |sy: usize, row: &mut [f32]| {
        let source = &pixels[sy * fw * 3..(sy + 1) * fw * 3];
        let (r, gb) = row.split_at_mut(w);
        let (g, b) = gb.split_at_mut(w);
        for (x, &(a, z, wx)) in columns.iter().enumerate() {
            let blend = |c: usize| {
                (f32::from(source[a + c]) * (1.0 - wx) + f32::from(source[z + c]) * wx) * SCALE
            };
            (r[x], g[x], b[x]) = (blend(0), blend(1), blend(2));
        }
    };
    let plane = w * h;
    let (mut top, mut bottom) = (vec![0.0f32; 3 * w], vec![0.0f32; 3 * w]);
    let mut held = (usize::MAX, usize::MAX);
    for y in 0..h {
        let sy = source_position(y, fh, h);
        let y0 = sy as usize;
        let y1 = (y0 + 1).min(fh - 1);
        let wy = sy - y0 as f32;
        if held.0 != y0 {
            if held.1 == y0 {
                std::mem::swap(&mut top, &mut bottom);
                held.0 = y0;
                held.1 = usize::MAX;
            } else {
                across(y0, &mut top);
                held.0 = y0;
            }
        }
        if held.1 != y1 {
            across(y1, &mut bottom);
            held.1 = y1;
        }
        for c in 0..3 {
            let (t, d) = (&top[c * w..(c + 1) * w], &bottom[c * w..(c + 1) * w]);
            let row = &mut out[c * plane + y * w..c * plane + (y + 1) * w];
            for ((o, &t), &d) in row.iter_mut().zip(t).zip(d) {
                *o = t * (1.0 - wy) + d * wy;
            }
        }
    }
}

/// Where output pixel `i` of `to` samples a source of `from` pixels (pixel centres aligned,
/// clamped to the edge).
fn source_position(i: usize, from: usize, to: usize) -> f32 {
    ((i as f32 + 0.5) * from as f32 / to as f32 - 0.5).clamp(0.0, (from - 1) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preprocess_scales_and_plans_channels() {
        let frame = RgbImage::from_fn(8, 4, |x, _| image::Rgb([255, (x * 30) as u8, 0]));
        let mut out = vec![0.0; 3 * 4 * 2];
        preprocess(&frame, 4, 2, &mut out);
        assert!(out[..8].iter().all(|&r| (r - 1.0).abs() < 1e-6), "{out:?}");
        assert!(out[16..].iter().all(|&b| b == 0.0));
        // Green grows left to right.
        assert!(out[8] < out[9] && out[9] < out[10] && out[10] < out[11]);
    }

    #[test]
    fn preprocess_matches_the_pixel_by_pixel_resize() {
        // Down and up in each direction, odd sizes, one-pixel sources.
        for (fw, fh, w, h) in [
            (640, 360, 416, 416),
            (1280, 720, 416, 416),
            (37, 23, 50, 11),
            (1, 1, 4, 3),
            (5, 1, 3, 7),
            (416, 416, 416, 416),
        ] {
            let frame = RgbImage::from_fn(fw, fh, |x, y| {
                image::Rgb([(x * 7 + y) as u8, (x ^ y) as u8, (x * y + 3) as u8])
            });
            let (mut fast, mut slow) = (
                vec![0.0; (3 * w * h) as usize],
                vec![0.0; (3 * w * h) as usize],
            );
            preprocess(&frame, w, h, &mut fast);
            preprocess_reference(&frame, w, h, &mut slow);
            let worst = fast
                .iter()
                .zip(&slow)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(worst < 1e-5, "{fw}x{fh} to {w}x{h}: off by {worst}");
        }
    }

    /// Bilinear resizing by its definition, one output value at a time: what `preprocess`
    /// must compute.
    fn preprocess_reference(frame: &RgbImage, width: u32, height: u32, out: &mut [f32]) {
        let (fw, fh) = (frame.width() as usize, frame.height() as usize);
        let (w, h) = (width as usize, height as usize);
        let value =
            |x: usize, y: usize, c: usize| f32::from(frame.get_pixel(x as u32, y as u32)[c]);
        for y in 0..h {
            let sy = source_position(y, fh, h);
            let (y0, wy) = (sy as usize, sy - sy.floor());
            let y1 = (y0 + 1).min(fh - 1);
            for x in 0..w {
                let sx = source_position(x, fw, w);
                let (x0, wx) = (sx as usize, sx - sx.floor());
                let x1 = (x0 + 1).min(fw - 1);
                for c in 0..3 {
                    let top = value(x0, y0, c) * (1.0 - wx) + value(x1, y0, c) * wx;
                    let bottom = value(x0, y1, c) * (1.0 - wx) + value(x1, y1, c) * wx;
                    out[c * w * h + y * w + x] = (top * (1.0 - wy) + bottom * wy) / 255.0;
                }
            }
        }
    }

    #[test]
    fn labels_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("labels.txt");
        std::fs::write(&path, "person\ncar\n\n").unwrap();
        assert_eq!(read_labels(&path).unwrap(), ["person", "car"]);
        std::fs::write(&path, "person\n\u{7}bell\n").unwrap();
        let err = read_labels(&path).unwrap_err().to_string();
        assert!(
            err.contains("model.labels") && err.contains("line 2"),
            "{err}"
        );
        let err = read_labels(&dir.path().join("none"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("model.labels"), "{err}");
    }

    #[test]
    fn a_missing_runtime_library_is_named() {
        let err = library_path(Some(Path::new("/nonexistent/libonnxruntime.so"))).unwrap_err();
        assert!(
            err.contains("model.onnxruntime_library") && err.contains("pip install onnxruntime"),
            "{err}"
        );
    }
}
