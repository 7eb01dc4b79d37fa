//! Pictures in both the edge and the cloud: scaling a frame down by averaging each output
//! pixel's area ([`downscale`]), encoding it as a JPEG ([`encode`], `jpeg-encoder`), and a
//! thumbnail of a stored JPEG ([`thumbnail`], the query service's `max_width`).

use image::RgbImage;
use thiserror::Error;

/// The widest and tallest picture [`thumbnail`] decodes.
pub const MAX_SIDE: u32 = 8192;

/// Why a picture could not be encoded.
#[derive(Debug, Error)]
pub enum EncodeError {
    #[error("a {0}x{1} picture is too large for a JPEG (at most 65535 on a side)")]
    TooLarge(u32, u32),
    #[error("JPEG encoding failed: {0}")]
    Encode(#[from] jpeg_encoder::EncodingError),
}

/// Why a thumbnail could not be made.
#[derive(Debug, Error)]
pub enum ThumbnailError {
    #[error("the stored JPEG cannot be decoded: {0}")]
    Decode(#[from] image::ImageError),
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

/// `image` as a JPEG of `quality` (1 to 100).
pub fn encode(image: &RgbImage, quality: u8) -> Result<Vec<u8>, EncodeError> {
    let (width, height) = image.dimensions();
    let too_large = || EncodeError::TooLarge(width, height);
    let mut jpeg = Vec::new();
    jpeg_encoder::Encoder::new(&mut jpeg, quality.clamp(1, 100)).encode(
        image.as_raw(),
        u16::try_from(width).map_err(|_| too_large())?,
        u16::try_from(height).map_err(|_| too_large())?,
        jpeg_encoder::ColorType::Rgb,
    )?;
    Ok(jpeg)
}

/// The JPEG `jpeg` scaled down to at most `max_width` pixels wide (its aspect kept) and
/// encoded at `quality`; `None` if it is no wider than that already (serve it as it is).
pub fn thumbnail(
    jpeg: &[u8],
    max_width: u32,
    quality: u8,
) -> Result<Option<Vec<u8>>, ThumbnailError> {
    // Bounded: a stored picture is at most 8192 x 8192 (ingest refuses larger), and a
    // decode never allocates more than one of those.
    let mut reader =
        image::ImageReader::with_format(std::io::Cursor::new(jpeg), image::ImageFormat::Jpeg);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(u64::from(MAX_SIDE) * u64::from(MAX_SIDE) * 3);
    reader.limits(limits);
    let decoded = reader.decode()?;
    if decoded.width() <= max_width {
        return Ok(None);
    }
    let frame = decoded.into_rgb8();
    let height =
        (u64::from(frame.height()) * u64::from(max_width) / u64::from(frame.width())).max(1) as u32;
    Ok(Some(encode(
        &downscale(&frame, max_width, height),
        quality,
    )?))
}

/// `frame` scaled down to `width` x `height` (each at most the frame's): every output pixel
/// is the mean of the frame's pixels in its area (rounded), so no detail aliases away; each
/// pixel of the frame is read once.
pub fn downscale(frame: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (w, h) = (frame.width() as usize, frame.height() as usize);
    let (out_w, out_h) = (
        (width as usize).clamp(1, w.max(1)),
        (height as usize).clamp(1, h.max(1)),
    );
    // The frame's columns and rows each output column and row covers: [start, end).
    let spans = |n: usize, out: usize| -> Vec<(usize, usize)> {
        (0..out)
            .map(|i| {
                let start = i * n / out;
                (start, ((i + 1) * n / out).max(start + 1))
            })
            .collect()
    };
    let mut out = Vec::with_capacity(out_w * out_h * 3);
    if w == 2 * out_w && h == 2 * out_h {
        // Half size (1280x720 to 640, the default): each output pixel is a 2x2 block.
        for pair in frame.as_raw().chunks_exact(w * 6) {
            let (upper, lower) = pair.split_at(w * 3);
            for (a, b) in upper.chunks_exact(6).zip(lower.chunks_exact(6)) {
                for c in 0..3 {
                    let sum = u16::from(a[c])
                        + u16::from(a[c + 3])
                        + u16::from(b[c])
                        + u16::from(b[c + 3]);
                    out.push(((sum + 2) / 4) as u8);
                }
            }
        }
    } else {
        let (columns, rows) = (spans(w, out_w), spans(h, out_h));
        average_areas(frame.as_raw(), w, &rows, &columns, &mut out);
    }
    RgbImage::from_raw(out_w as u32, out_h as u32, out).unwrap_or_default()
}

/// The mean of each (row span x column span) area of the RGB pixels `src` (rows of `w`),
/// appended to `out`. Per output row, the frame's rows it covers are summed column by
/// column (a plain loop the compiler vectorizes), then each output pixel's columns of that
/// sum.
fn average_areas(
    src: &[u8],
    w: usize,
    rows: &[(usize, usize)],
    columns: &[(usize, usize)],
    out: &mut Vec<u8>,
) {
    let mut column_sums = vec![0u32; w * 3];
    for &(top, bottom) in rows {
        column_sums.fill(0);
        for row in src[top * w * 3..bottom * w * 3].chunks_exact(w * 3) {
            for (sum, &byte) in column_sums.iter_mut().zip(row) {
                *sum += u32::from(byte);
            }
        }
        for &(left, right) in columns {
            let area = ((right - left) * (bottom - top)) as u32;
            let mut pixel = [0u32; 3];
            for sum in column_sums[left * 3..right * 3].chunks_exact(3) {
                pixel[0] += sum[0];
                pixel[1] += sum[1];
                pixel[2] += sum[2];
            }
            out.extend(pixel.map(|s| ((s + area / 2) / area) as u8));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    #[test]
    fn downscaling_averages_each_area() {
        // A 4x2 frame: two 2x2 blocks, one of 0/100/200/40 red, one of 255s.
        let mut frame = RgbImage::new(4, 2);
        for (x, y, red) in [(0, 0, 0), (1, 0, 100), (0, 1, 200), (1, 1, 40)] {
            frame.put_pixel(x, y, Rgb([red, 7, 9]));
        }
        for (x, y) in [(2, 0), (3, 0), (2, 1), (3, 1)] {
            frame.put_pixel(x, y, Rgb([255, 255, 255]));
        }
        let small = downscale(&frame, 2, 1);
        assert_eq!(small.dimensions(), (2, 1));
        assert_eq!(small.get_pixel(0, 0), &Rgb([85, 7, 9]));
        assert_eq!(small.get_pixel(1, 0), &Rgb([255, 255, 255]));
        // A ratio that is not whole: 5 columns into 2 (2 and 3 columns), and no larger
        // than the frame however asked.
        let wide = RgbImage::from_fn(5, 1, |x, _| Rgb([(x * 10) as u8, 0, 0]));
        let small = downscale(&wide, 2, 9);
        assert_eq!(small.dimensions(), (2, 1));
        assert_eq!(
            (small.get_pixel(0, 0)[0], small.get_pixel(1, 0)[0]),
            (5, 30)
        );
    }

    #[test]
    fn halving_is_the_mean_of_each_two_by_two_block() {
        let frame = RgbImage::from_fn(8, 6, |x, y| {
            Rgb([(x * 31 + y * 7) as u8, (x * y) as u8, 255])
        });
        let small = downscale(&frame, 4, 3);
        for (x, y, pixel) in small.enumerate_pixels() {
            for c in 0..3 {
                let sum: u32 = [(0, 0), (1, 0), (0, 1), (1, 1)]
                    .iter()
                    .map(|(dx, dy)| u32::from(frame.get_pixel(2 * x + dx, 2 * y + dy)[c]))
                    .sum();
                assert_eq!(u32::from(pixel[c]), (sum + 2) / 4, "({x}, {y}) channel {c}");
            }
        }
    }

    #[test]
    fn a_thumbnail_keeps_the_aspect_and_leaves_small_pictures_alone() {
        let frame = RgbImage::from_fn(640, 360, |x, y| Rgb([(x % 256) as u8, (y % 256) as u8, 99]));
        let jpeg = encode(&frame, 85).unwrap();
        let small = thumbnail(&jpeg, 160, 80).unwrap().unwrap();
        let decoded = image::load_from_memory(&small).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (160, 90));
        assert!(thumbnail(&jpeg, 640, 80).unwrap().is_none());
        assert!(matches!(
            thumbnail(b"not a jpeg", 100, 80),
            Err(ThumbnailError::Decode(_))
        ));
    }
}
