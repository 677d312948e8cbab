//! Identifiers of contract section 1: how they are made and how they are recognised.

const ALNUM: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

const DIGITS: &[u8; 10] = b"0123456789";

/// Fills `bytes` from the OS. The platform cannot make an unguessable id without it, so a
/// failing RNG is reported rather than papered over.
fn os_fill(bytes: &mut [u8]) -> Result<(), crate::error::ApiError> {
    getrandom::fill(bytes)
        .map_err(|_| crate::error::ApiError::new(crate::error::Code::Internal, "internal error"))
}

/// Random bytes from the OS (see [`os_fill`]).
pub fn random_bytes<const N: usize>() -> Result<[u8; N], crate::error::ApiError> {
    let mut bytes = [0u8; N];
    os_fill(&mut bytes)?;
    Ok(bytes)
}

/// `len` characters of `[0-9A-Za-z]`, uniformly drawn (rejection sampling: 62 does not divide
/// 256, and a modulo bias would thin out the last letters), straight from the OS: for secrets
/// (client secrets, attestation tokens) as well as ids.
pub fn random_alnum(len: usize) -> Result<String, crate::error::ApiError> {
    drawn_from(ALNUM, len, os_fill)
}

/// As [`random_alnum`], from this thread's [`IdPool`]: only for names the platform publishes
/// (charge, event and nonce ids, request ids), never for a secret.
pub fn id_alnum(len: usize) -> Result<String, crate::error::ApiError> {
    drawn_from(ALNUM, len, IdPool::fill)
}

/// `len` characters of `alphabet`, uniformly drawn from the bytes `fill` gives: a byte at or
/// past the last whole multiple of the alphabet's size is rejected, since keeping it would
/// favour the first characters.
fn drawn_from(
    alphabet: &[u8],
    len: usize,
    mut fill: impl FnMut(&mut [u8]) -> Result<(), crate::error::ApiError>,
) -> Result<String, crate::error::ApiError> {
    let size = alphabet.len();
    let limit = 256 - 256 % size;
    let mut out = String::with_capacity(len);
    // At most one byte in 32 is rejected (for 62 characters; one in 43 for 10); drawing about
    // twice that on top of what is missing makes a second round rare, and a shortfall simply
    // takes one.
    let mut buf = [0u8; 64];
    while out.len() < len {
        let want = (len - out.len() + len / 16 + 2).min(buf.len());
        let drawn = buf.get_mut(..want).unwrap_or_default();
        fill(drawn)?;
        for &b in &*drawn {
            let b = usize::from(b);
            if b < limit
                && out.len() < len
                && let Some(&c) = alphabet.get(b % size)
            {
                out.push(char::from(c));
            }
        }
    }
    Ok(out)
}

/// A per-thread pool of OS randomness for published ids. A charge names four things (the
/// request, its nonce, the charge, its event), and one `getrandom` system call for each was
/// 2.5 % of a worker thread's time (BENCHMARKS.md); the pool makes one call per
/// [`IdPool::SIZE`] bytes. Whoever could read the pool could predict the next few ids, which
/// grants nothing: an id is a name, never a capability (every read is checked against the
/// caller's tenancy). So secrets never come from it, and neither does anything a fork or a
/// cloned VM could repeat harmfully (a repeated id would still differ in its time prefix).
/// Each byte is handed out once and zeroed as it leaves.
struct IdPool {
    bytes: [u8; Self::SIZE],
    /// Bytes before `used` have been handed out (and zeroed).
    used: usize,
}

impl IdPool {
    const SIZE: usize = 512;

    const fn empty() -> Self {
        Self {
            bytes: [0; Self::SIZE],
            used: Self::SIZE,
        }
    }

    /// Fills `out` from this thread's pool, refilled from the OS.
    fn fill(out: &mut [u8]) -> Result<(), crate::error::ApiError> {
        thread_local! {
            static POOL: std::cell::RefCell<IdPool> = const {
                std::cell::RefCell::new(IdPool::empty())
            };
        }
        POOL.with_borrow_mut(|pool| pool.take(out, |bytes| os_fill(bytes)))
    }

    /// Hands out the next `out.len()` bytes, calling `refill` on the whole pool whenever it
    /// runs dry.
    fn take<E>(
        &mut self,
        out: &mut [u8],
        mut refill: impl FnMut(&mut [u8; Self::SIZE]) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut done = 0;
        while done < out.len() {
            if self.used == Self::SIZE {
                refill(&mut self.bytes)?;
                self.used = 0;
            }
            let rest = out.get_mut(done..).unwrap_or_default();
            let left = self.bytes.get_mut(self.used..).unwrap_or_default();
            let n = rest.len().min(left.len());
            for (to, from) in rest.iter_mut().zip(left) {
                *to = std::mem::take(from);
            }
            self.used += n;
            done += n;
        }
        Ok(())
    }
}

/// `len` uniformly drawn decimal digits (rejection sampling, as [`random_alnum`]): a
/// merchant's `acquirer_mid` is 15 of them.
pub fn random_digits(len: usize) -> Result<String, crate::error::ApiError> {
    drawn_from(DIGITS, len, os_fill)
}

/// A prefixed random id: `ch_` + 24 characters is 142 bits.
pub fn prefixed(prefix: &str) -> Result<String, crate::error::ApiError> {
    Ok(format!("{prefix}{}", random_alnum(24)?))
}

/// A prefixed id that sorts by creation time: 8 base-62 digits of milliseconds since the epoch,
/// then 16 random characters (95 bits). Records keyed by such ids are appended to the end of
/// the store's B-tree instead of landing on a random page, which keeps the pages a commit
/// touches (and writes to the log) few under load.
pub fn time_ordered(prefix: &str) -> Result<String, crate::error::ApiError> {
    let mut ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut digits = [b'0'; 8];
    for d in digits.iter_mut().rev() {
        *d = ALNUM
            .get(usize::try_from(ms % 62).unwrap_or_default())
            .copied()
            .unwrap_or(b'0');
        ms /= 62;
    }
    Ok(format!(
        "{prefix}{}{}",
        String::from_utf8_lossy(&digits),
        id_alnum(16)?
    ))
}

/// A random (version 4) UUID, lower-case and hyphenated.
pub fn uuid() -> Result<String, crate::error::ApiError> {
    let bytes = random_bytes::<16>()?;
    Ok(uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string())
}

/// A lower-case hyphenated UUID (any version).
pub fn is_uuid(s: &str) -> bool {
    // The hyphenated form, lower-case only (the contract's form), as `uuid` itself writes it.
    s.len() == 36 && uuid::Uuid::try_parse(s).is_ok_and(|u| u.hyphenated().to_string() == s)
}

/// `POS-` and 8 upper-case hex digits.
pub fn is_device_id(s: &str) -> bool {
    s.len() == 12
        && s.starts_with("POS-")
        && s.bytes()
            .skip(4)
            .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c))
}

/// A prefix and at least `min` characters of `[0-9A-Za-z]`.
pub fn is_prefixed(s: &str, prefix: &str, min: usize) -> bool {
    s.strip_prefix(prefix)
        .is_some_and(|rest| rest.len() >= min && rest.bytes().all(|c| c.is_ascii_alphanumeric()))
}

/// An API client id: `cli_` and at least 20 alphanumerics.
pub fn is_client_id(s: &str) -> bool {
    is_prefixed(s, "cli_", 20) && s.len() <= 64
}

/// A key-injection zone name, as keyd accepts it.
pub fn is_zone(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// A POS app version `MAJOR.MINOR.PATCH` as numbers (compared numerically, contract section 4).
pub fn pos_version(text: &str) -> Option<(u32, u32, u32)> {
    let mut parts = text.split('.');
    let mut next = || -> Option<u32> {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 9 || !p.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        p.parse().ok()
    };
    let version = (next()?, next()?, next()?);
    parts.next().is_none().then_some(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_ids_are_recognised() {
        let u = uuid().unwrap();
        assert!(is_uuid(&u), "{u}");
        assert_eq!(u.as_bytes()[14], b'4');
        assert_ne!(u, uuid().unwrap());
        assert!(!is_uuid(&u.to_uppercase().replace('4', "A")));
        let c = prefixed("cli_").unwrap();
        assert!(is_client_id(&c) && c.len() == 28);
        assert!(is_prefixed(&prefixed("ch_").unwrap(), "ch_", 20));
        assert!(!is_prefixed("ch_short", "ch_", 20));
        assert!(is_device_id("POS-8F3A2C91"));
        for bad in [
            "POS-8f3a2c91",
            "POS-8F3A2C9",
            "POS-8F3A2C91A",
            "PAS-8F3A2C91",
            "POS-8G3A2C91",
        ] {
            assert!(!is_device_id(bad), "{bad}");
        }
        let a = time_ordered("ch_").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = time_ordered("ch_").unwrap();
        assert!(is_prefixed(&a, "ch_", 20) && a.len() == 27);
        assert!(a[..11] < b[..11], "{a} {b}");
        let long = random_alnum(300).unwrap();
        assert_eq!(long.len(), 300);
        assert!(long.bytes().all(|c| c.is_ascii_alphanumeric()));
        let mid = random_digits(15).unwrap();
        assert!(
            mid.len() == 15 && mid.bytes().all(|c| c.is_ascii_digit()),
            "{mid}"
        );
    }

    /// Digits are drawn as uniformly as characters (the same rejection, another alphabet).
    #[test]
    fn digits_are_uniform() {
        let mut counts = [0_u32; 10];
        for _ in 0..2000 {
            for b in random_digits(15).unwrap().bytes() {
                counts[usize::from(b - b'0')] += 1;
            }
        }
        // 30,000 digits, 3,000 expected each: a chi-square over 9 degrees of freedom passes
        // 45 about once in 700,000 checks. This sees a broken mapping, not the small modulo
        // bias rejection removes (digits 0 to 5 drawn 4 % more often would add about 11);
        // `pooled_ids_are_uniform` sees that bias through the same `drawn_from`.
        let chi: f64 = counts
            .iter()
            .map(|&n| (f64::from(n) - 3000.0).powi(2) / 3000.0)
            .sum();
        assert!(chi < 45.0, "chi-square {chi:.1}, counts {counts:?}");
    }

    /// The pool hands out every byte of every refill once, in order, across refills and
    /// whatever the sizes asked, and zeroes what it handed out.
    #[test]
    fn the_pool_hands_each_byte_out_once() {
        let mut pool = IdPool::empty();
        let mut refills = 0_u8;
        let mut refill = |bytes: &mut [u8; IdPool::SIZE]| {
            refills += 1;
            for (i, b) in bytes.iter_mut().enumerate() {
                *b = u8::try_from(i % 251).unwrap() ^ refills.wrapping_mul(97);
            }
            Ok::<(), ()>(())
        };
        let mut got = Vec::new();
        for size in [1, 7, 511, 2, 512, 600, 13, 1, 400] {
            let mut out = vec![0u8; size];
            pool.take(&mut out, &mut refill).unwrap();
            got.extend(out);
            assert!(pool.bytes[..pool.used].iter().all(|&b| b == 0));
        }
        let expected: Vec<u8> = (1..=refills)
            .flat_map(|r| {
                (0..IdPool::SIZE).map(move |i| u8::try_from(i % 251).unwrap() ^ r.wrapping_mul(97))
            })
            .take(got.len())
            .collect();
        assert_eq!(usize::from(refills), got.len().div_ceil(IdPool::SIZE));
        assert_eq!(got, expected);
    }

    /// Ids from the pool are as uniform over the 62 characters as those straight from the OS.
    #[test]
    fn pooled_ids_are_uniform() {
        for (name, draw) in [
            (
                "pool",
                id_alnum as fn(usize) -> Result<String, crate::error::ApiError>,
            ),
            ("os", random_alnum),
        ] {
            let mut counts = [0_u32; 62];
            let mut ids = std::collections::HashSet::new();
            for _ in 0..4000 {
                let id = draw(31).unwrap();
                assert_eq!(id.len(), 31);
                for b in id.bytes() {
                    let i = ALNUM.iter().position(|&c| c == b).unwrap();
                    counts[i] += 1;
                }
                assert!(ids.insert(id), "{name}: an id came twice");
            }
            // 124,000 characters, 2,000 expected each: a chi-square over 61 degrees of
            // freedom passes 140 about once in 25 million checks; a modulo bias (the first
            // eight characters drawn a quarter more often) would put it near 880.
            let expected = 4000.0 * 31.0 / 62.0;
            let chi: f64 = counts
                .iter()
                .map(|&n| (f64::from(n) - expected).powi(2) / expected)
                .sum();
            assert!(
                chi < 140.0,
                "{name}: chi-square {chi:.1}, counts {counts:?}"
            );
        }
    }
}
