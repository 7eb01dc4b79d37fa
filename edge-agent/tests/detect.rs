//! The detector through real ONNX Runtime: the shipped NanoDet model on real pictures, and
//! the YOLO decoders on tiny generated models with known outputs.
//!
//! ONNX Runtime comes from `ORT_DYLIB_PATH` (scripts/test.sh points it at pip's
//! onnxruntime wheel).

use std::path::{Path, PathBuf};

use sightline_edge_agent::config::{DecoderKind, ModelConfig};
use sightline_edge_agent::detect::{Detector, Found};
use sightline_shared::BoundingBox;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn nanodet() -> ModelConfig {
    ModelConfig {
        path: repo().join("models/nanodet_coco_416.onnx"),
        labels: repo().join("models/coco.names"),
        ..ModelConfig::default()
    }
}

fn picture(name: &str) -> image::RgbImage {
    image::open(repo().join("tests/fixtures/images").join(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .to_rgb8()
}

/// A box in pixels of a `w` x `h` picture, normalized.
fn pixels(w: f32, h: f32, x0: f32, y0: f32, x1: f32, y1: f32) -> BoundingBox {
    BoundingBox {
        x_min: x0 / w,
        y_min: y0 / h,
        x_max: x1 / w,
        y_max: y1 / h,
    }
}

fn best<'a>(detector: &Detector, found: &'a [Found], label: &str) -> &'a Found {
    found
        .iter()
        .find(|f| detector.label(f.class_id) == label)
        .unwrap_or_else(|| {
            let seen: Vec<_> = found
                .iter()
                .map(|f| format!("{} {:.2}", detector.label(f.class_id), f.score))
                .collect();
            panic!("no {label} among {seen:?}")
        })
}

#[test]
fn the_shipped_model_finds_the_dog_and_the_person_where_they_are() {
    let detector = Detector::load(&nanodet()).expect("load the shipped model");
    assert_eq!(detector.input_size(), (416, 416));
    assert_eq!(detector.info().name, "nanodet_coco_416");
    assert_eq!(detector.info().version, "32855c984905");

    // dog.jpg (768x576): the dog sits bottom left, the bicycle behind it.
    let (found, _) = detector.detect(&picture("dog.jpg")).unwrap();
    let dog = best(&detector, &found, "dog");
    let truth = pixels(768.0, 576.0, 128.0, 223.0, 314.0, 550.0);
    let overlap = sightline_edge_agent::detect::decode::iou(&dog.bbox, &truth);
    assert!(
        overlap > 0.5,
        "dog at {:?}, IoU {overlap} with {truth:?}",
        dog.bbox
    );
    best(&detector, &found, "bicycle");

    // person.jpg (640x424): the person stands left of centre, the horse to the right.
    let (found, _) = detector.detect(&picture("person.jpg")).unwrap();
    let person = best(&detector, &found, "person");
    let truth = pixels(640.0, 424.0, 190.0, 95.0, 276.0, 380.0);
    let overlap = sightline_edge_agent::detect::decode::iou(&person.bbox, &truth);
    assert!(
        overlap > 0.5,
        "person at {:?}, IoU {overlap} with {truth:?}",
        person.bbox
    );
    let horse = best(&detector, &found, "horse");
    assert!(horse.bbox.x_min > person.bbox.x_max - 0.05, "{horse:?}");
}

/// A 720p camera's frames are decoded at half size (capture/jpeg.rs): the detector must find
/// the same objects in the same places as in the full-size decode of every test picture.
#[test]
fn the_half_size_decode_finds_what_the_full_size_one_finds() {
    use sightline_edge_agent::capture::jpeg::{DecodeSize, JpegDecoder};
    let detector = Detector::load(&nanodet()).expect("load the shipped model");
    let camera = DecodeSize::for_camera(detector.input_size(), Some(640));
    let (mut half, mut full) = (
        JpegDecoder::new(camera).unwrap(),
        JpegDecoder::new(DecodeSize::FULL).unwrap(),
    );
    for name in [
        "dog.jpg",
        "eagle.jpg",
        "giraffe.jpg",
        "horses.jpg",
        "person.jpg",
    ] {
        let frame = image::imageops::resize(
            &picture(name),
            1280,
            720,
            image::imageops::FilterType::Triangle,
        );
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 85)
            .encode_image(&frame)
            .unwrap();
        let small = half.decode(&jpeg).unwrap();
        assert_eq!(small.dimensions(), (640, 360), "{name}");
        let (a, _) = detector.detect(&small).unwrap();
        let (b, _) = detector.detect(&full.decode(&jpeg).unwrap()).unwrap();
        let named = |found: &[Found]| -> Vec<String> {
            found
                .iter()
                .map(|f| format!("{} {:.2} {:?}", detector.label(f.class_id), f.score, f.bbox))
                .collect()
        };
        // Every confident object (0.4, the camera test's bar) of one decode is in the other,
        // in the same place and about as sure.
        for (these, those) in [(&a, &b), (&b, &a)] {
            for f in these.iter().filter(|f| f.score >= 0.4) {
                let twin = those.iter().find(|g| {
                    g.class_id == f.class_id
                        && sightline_edge_agent::detect::decode::iou(&f.bbox, &g.bbox) > 0.85
                        && (g.score - f.score).abs() < 0.1
                });
                assert!(
                    twin.is_some(),
                    "{name}: half size {:?}\nfull size {:?}",
                    named(&a),
                    named(&b)
                );
            }
        }
    }
}

fn tiny_yolo(dir: &Path, layout: &str) -> ModelConfig {
    let model = dir.join(format!("tiny_{layout}.onnx"));
    let status = std::process::Command::new("python3")
        .arg(repo().join("tests/fixtures/make_yolo.py"))
        .arg(&model)
        .arg(layout)
        .status()
        .expect("python3 runs (scripts/test.sh installs the onnx package)");
    assert!(
        status.success(),
        "make_yolo.py failed: is the onnx package installed?"
    );
    let labels = dir.join("labels.txt");
    std::fs::write(&labels, "alpha\nbeta\ngamma\n").expect("write the labels file");
    ModelConfig {
        path: model,
        labels,
        decoder: if layout == "v5" {
            DecoderKind::Yolov5
        } else {
            DecoderKind::Yolov8
        },
        score_threshold: 0.5,
        ..ModelConfig::default()
    }
}

#[test]
fn yolo_exports_decode_to_the_known_boxes() {
    let dir = tempfile::tempdir().unwrap();
    for layout in ["v8", "v5"] {
        let detector = Detector::load(&tiny_yolo(dir.path(), layout)).unwrap();
        // Any frame size: boxes come back normalized.
        let (found, _) = detector.detect(&image::RgbImage::new(320, 240)).unwrap();
        let got: Vec<(String, f32, BoundingBox)> = found
            .iter()
            .map(|f| (detector.label(f.class_id), f.score, f.bbox))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "alpha".into(),
                    0.9,
                    pixels(64.0, 64.0, 8.0, 8.0, 24.0, 24.0)
                ),
                (
                    "gamma".into(),
                    0.8,
                    pixels(64.0, 64.0, 38.0, 35.0, 58.0, 45.0)
                ),
            ],
            "{layout}"
        );
    }
}

#[test]
fn a_decoder_that_does_not_fit_the_model_fails_at_load_with_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_yolo(dir.path(), "v8");
    config.decoder = DecoderKind::Yolov5;
    let err = Detector::load(&config).unwrap_err().to_string();
    assert!(
        err.starts_with("model.decoder") && err.contains("yolov5"),
        "{err}"
    );
    config.decoder = DecoderKind::Nanodet;
    let err = Detector::load(&config).unwrap_err().to_string();
    assert!(err.starts_with("model.decoder"), "{err}");

    let err = Detector::load(&ModelConfig {
        path: dir.path().join("missing.onnx"),
        ..nanodet()
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("model.path") && err.contains("missing.onnx"),
        "{err}"
    );
    std::fs::write(dir.path().join("junk.onnx"), b"not a model").unwrap();
    let err = Detector::load(&ModelConfig {
        path: dir.path().join("junk.onnx"),
        ..nanodet()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("not a loadable ONNX model"), "{err}");
}
