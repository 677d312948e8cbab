//! Byte buffers that carry frames without leaving copies behind.
//!
//! Requests and answers hold secrets (plaintexts, card data, PANs, identity secrets). A `Vec`
//! that is drained from the front moves the rest down and leaves the moved bytes behind in
//! its spare capacity, and one that grows copies everything to a new allocation and frees the
//! old one as it is. These two helpers do the same work and wipe what they leave: both ends of
//! the socket (keyd's connections, the client) read and write through them.

use alloc::vec::Vec;

/// Makes room for `additional` more bytes. When the buffer has to move, the new allocation is
/// made first and the old one is wiped before it is freed.
pub fn reserve(buf: &mut Vec<u8>, additional: usize) {
    if buf.capacity() - buf.len() >= additional {
        return;
    }
    let wanted = buf
        .len()
        .saturating_add(additional)
        .max(buf.capacity().saturating_mul(2));
    let mut moved = Vec::with_capacity(wanted);
    moved.extend_from_slice(buf);
    wipe(buf);
    *buf = moved;
}

/// Zeroes the bytes in use and empties the buffer, keeping its allocation. Only `len` bytes are
/// written over: in buffers used through this module nothing past `len` holds data (consumed
/// positions are wiped by [`consume`], and fresh capacity never held any), and zeroing the
/// whole capacity of a buffer that once grew large would cost a full memset per use.
pub fn wipe(buf: &mut Vec<u8>) {
    zero(buf.as_mut_slice());
    buf.clear();
}

/// Removes the first `used` bytes (frames already handled), moving the rest to the front, and
/// wipes every byte position that no longer belongs to the buffer.
pub fn consume(buf: &mut Vec<u8>, used: usize) {
    let kept = shift_wiping(buf, used);
    buf.truncate(kept);
}

/// [`consume`] before the truncation: the rest moved to the front, everything after it zero.
/// Returns the length to keep.
fn shift_wiping(buf: &mut [u8], used: usize) -> usize {
    let len = buf.len();
    let used = used.min(len);
    buf.copy_within(used.., 0);
    let kept = len - used;
    if let Some(stale) = buf.get_mut(kept..) {
        zero(stale);
    }
    kept
}

/// Zeroes `bytes` with one `memset` the optimiser cannot drop (zeroize's slice impl: a fill
/// followed by an assembly barrier). A `Vec<u8>`'s own `Zeroize` writes its elements byte by
/// byte through volatile stores, which cannot be vectorised; on keyd's socket path, where every
/// byte of every frame is wiped, that cost a measurable share of throughput.
pub fn zero(bytes: &mut [u8]) {
    zeroize::Zeroize::zeroize(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumed_and_moved_bytes_are_wiped() {
        let mut buf = b"SECRETsecretREST".to_vec();
        let kept = shift_wiping(&mut buf, 12);
        assert_eq!(kept, 4);
        assert_eq!(&buf[..4], b"REST");
        assert_eq!(
            &buf[4..],
            &[0u8; 12],
            "the secret and the moved copy are gone"
        );
        let mut buf = b"SECRETsecretREST".to_vec();
        consume(&mut buf, 12);
        assert_eq!(buf, b"REST");
        let mut short = b"ab".to_vec();
        consume(&mut short, 5);
        assert!(short.is_empty());
    }

    #[test]
    fn growth_keeps_the_bytes() {
        let mut buf = b"abc".to_vec();
        let before = buf.capacity();
        reserve(&mut buf, 1000);
        assert_eq!(buf, b"abc");
        assert!(buf.capacity() >= 1003 && buf.capacity() > before);
        let cap = buf.capacity();
        reserve(&mut buf, 10);
        assert_eq!(buf.capacity(), cap, "no move when there is room");
    }
}
