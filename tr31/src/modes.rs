//! Block-cipher modes the key-block versions need, written over the RustCrypto block-cipher
//! traits so one code path serves TDES (8-byte blocks) and AES (16-byte blocks).
//!
//! They are small on purpose: CBC (SP 800-38A), CMAC (SP 800-38B / RFC 4493), the ISO 9797-1
//! algorithm 1 CBC-MAC of versions A and C, and CTR with a 128-bit big-endian counter (ISO 20038
//! version E). Each is cross-checked against the RustCrypto `cbc`, `cmac` and `ctr` crates in the
//! tests, and against the standards' key blocks in `tests/vectors.rs`.

use aes::cipher::{
    Block, BlockCipherDecrypt, BlockCipherEncrypt, BlockSizeUser, typenum::Unsigned,
};
use zeroize::Zeroize;

/// Block size of a cipher in bytes.
pub(crate) fn block_size<C: BlockSizeUser>() -> usize {
    C::BlockSize::USIZE
}

/// XORs `src` into `dst` (the shorter length wins).
#[inline]
fn xor_into(dst: &mut [u8], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d ^= s;
    }
}

/// CBC-encrypts `data` in place. `data.len()` must be a multiple of the block size; the caller
/// guarantees it (the payload layout always is).
pub(crate) fn cbc_encrypt<C: BlockCipherEncrypt>(cipher: &C, iv: &[u8], data: &mut [u8]) {
    let (blocks, _) = Block::<C>::slice_as_chunks_mut(data);
    let mut chain = Block::<C>::default();
    xor_into(&mut chain, iv);
    for block in blocks {
        xor_into(block, &chain);
        cipher.encrypt_block(block);
        chain.copy_from_slice(block);
    }
}

/// CBC-decrypts `data` in place. All blocks go through the cipher in one call so that parallel
/// backends (AES-NI) pipeline them; the chaining XOR follows.
pub(crate) fn cbc_decrypt<C: BlockCipherDecrypt>(cipher: &C, iv: &[u8], data: &mut [u8]) {
    let bs = block_size::<C>();
    // The last ciphertext block is needed after decryption for nothing, so keep only what the
    // XOR needs: a copy of every ciphertext block but the last. Key blocks are small, so a small
    // stack buffer covers almost all of them; larger payloads fall back to block-by-block.
    let mut saved = [0u8; 256];
    let (blocks, _) = Block::<C>::slice_as_chunks_mut(data);
    let n = blocks.len();
    if n * bs <= saved.len() {
        for (i, block) in blocks.iter().enumerate() {
            if let Some(dst) = saved.get_mut(i * bs..(i + 1) * bs) {
                dst.copy_from_slice(block);
            }
        }
        cipher.decrypt_blocks(blocks);
        for (i, block) in blocks.iter_mut().enumerate() {
            let prev = match i {
                0 => iv,
                _ => saved.get((i - 1) * bs..i * bs).unwrap_or_default(),
            };
            xor_into(block, prev);
        }
    } else {
        let mut chain = Block::<C>::default();
        xor_into(&mut chain, iv);
        let mut next = Block::<C>::default();
        for block in blocks {
            next.copy_from_slice(block);
            cipher.decrypt_block(block);
            xor_into(block, &chain);
            chain.copy_from_slice(&next);
        }
    }
}

/// A CBC chain that absorbs bytes from several slices without concatenating them.
struct Chain<'c, C: BlockCipherEncrypt> {
    cipher: &'c C,
    state: Block<C>,
    pos: usize,
    /// Blocks still to be encrypted before the final one, which the caller finishes itself.
    remaining_full: usize,
}

impl<'c, C: BlockCipherEncrypt> Chain<'c, C> {
    fn new(cipher: &'c C, total: usize) -> Self {
        let bs = block_size::<C>();
        let remaining_full = if total == 0 { 0 } else { (total - 1) / bs };
        Self {
            cipher,
            state: Block::<C>::default(),
            pos: 0,
            remaining_full,
        }
    }

    fn absorb(&mut self, mut data: &[u8]) {
        let bs = block_size::<C>();
        while !data.is_empty() {
            let take = (bs - self.pos).min(data.len());
            let (now, rest) = data.split_at(take);
            if let Some(dst) = self.state.get_mut(self.pos..self.pos + take) {
                xor_into(dst, now);
            }
            self.pos += take;
            data = rest;
            if self.pos == bs && self.remaining_full > 0 {
                self.cipher.encrypt_block(&mut self.state);
                self.pos = 0;
                self.remaining_full -= 1;
            }
        }
    }
}

/// CMAC key: a borrowed cipher and its two subkeys.
pub(crate) struct Cmac<'c, C: BlockCipherEncrypt> {
    cipher: &'c C,
    k1: Block<C>,
    k2: Block<C>,
}

impl<'c, C: BlockCipherEncrypt> Cmac<'c, C> {
    pub(crate) fn new(cipher: &'c C) -> Self {
        let mut l = Block::<C>::default();
        cipher.encrypt_block(&mut l);
        let k1 = dbl::<C>(&l);
        let k2 = dbl::<C>(&k1);
        l.as_mut_slice().zeroize();
        Self { cipher, k1, k2 }
    }

    /// CMAC over the concatenation of `parts`.
    pub(crate) fn mac(&self, parts: &[&[u8]]) -> Block<C> {
        let bs = block_size::<C>();
        let total = parts.iter().map(|p| p.len()).sum();
        let mut chain = Chain::new(self.cipher, total);
        for part in parts {
            chain.absorb(part);
        }
        if chain.pos == bs {
            xor_into(&mut chain.state, &self.k1);
        } else {
            if let Some(b) = chain.state.get_mut(chain.pos) {
                *b ^= 0x80;
            }
            xor_into(&mut chain.state, &self.k2);
        }
        self.cipher.encrypt_block(&mut chain.state);
        chain.state
    }
}

impl<C: BlockCipherEncrypt> Drop for Cmac<'_, C> {
    fn drop(&mut self) {
        self.k1.as_mut_slice().zeroize();
        self.k2.as_mut_slice().zeroize();
    }
}

/// Doubling in GF(2^n) as CMAC defines it: shift left by one bit, and if the top bit fell out,
/// XOR the last byte with Rb (0x87 for 128-bit blocks, 0x1B for 64-bit blocks).
fn dbl<C: BlockSizeUser>(input: &Block<C>) -> Block<C> {
    let rb = if block_size::<C>() == 16 { 0x87 } else { 0x1B };
    let mut out = Block::<C>::default();
    let mut carry = 0u8;
    for (o, i) in out.iter_mut().zip(input.iter()).rev() {
        *o = (i << 1) | carry;
        carry = i >> 7;
    }
    if carry == 1
        && let Some(last) = out.last_mut()
    {
        *last ^= rb;
    }
    out
}

/// ISO 9797-1 MAC algorithm 1 (CBC-MAC, zero IV, no padding) over the concatenation of `parts`,
/// whose total length must be a whole number of blocks. Returns `None` otherwise.
pub(crate) fn cbc_mac<C: BlockCipherEncrypt>(cipher: &C, parts: &[&[u8]]) -> Option<Block<C>> {
    let bs = block_size::<C>();
    let total: usize = parts.iter().map(|p| p.len()).sum();
    if total == 0 || !total.is_multiple_of(bs) {
        return None;
    }
    let mut chain = Chain::new(cipher, total);
    for part in parts {
        chain.absorb(part);
    }
    cipher.encrypt_block(&mut chain.state);
    Some(chain.state)
}

/// AES-CTR in place with a 128-bit big-endian counter starting at `initial` (ISO 20038 version E
/// uses the MAC as the initial counter block).
pub(crate) fn ctr_apply<C: BlockCipherEncrypt>(cipher: &C, initial: &Block<C>, data: &mut [u8]) {
    let mut counter = initial.clone();
    let mut keystream = Block::<C>::default();
    for chunk in data.chunks_mut(block_size::<C>()) {
        keystream.copy_from_slice(&counter);
        cipher.encrypt_block(&mut keystream);
        xor_into(chunk, &keystream);
        for byte in counter.iter_mut().rev() {
            *byte = byte.wrapping_add(1);
            if *byte != 0 {
                break;
            }
        }
    }
    keystream.as_mut_slice().zeroize();
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyInit, KeyIvInit, StreamCipher};
    use aes::{Aes128, Aes256};
    use cmac::Mac;
    use des::{TdesEde2, TdesEde3};
    use proptest::prelude::*;

    fn h(s: &str) -> alloc::vec::Vec<u8> {
        crate::hex::decode(s.as_bytes(), true).unwrap()
    }

    /// RFC 4493 section 4: AES-128 CMAC examples 1-4.
    #[test]
    fn cmac_rfc4493() {
        let key = Aes128::new_from_slice(&h("2b7e151628aed2a6abf7158809cf4f3c")).unwrap();
        let mac = Cmac::new(&key);
        let msg = h(
            "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e5130c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710",
        );
        let cases = [
            (0, "bb1d6929e95937287fa37d129b756746"),
            (16, "070a16b46b4d4144f79bdd9dd04a287c"),
            (40, "dfa66747de9ae63030ca32611497c827"),
            (64, "51f0bebf7e3b9d92fc49741779363cfe"),
        ];
        for (len, want) in cases {
            assert_eq!(
                mac.mac(&[&msg[..len]]).as_slice(),
                h(want).as_slice(),
                "len {len}"
            );
        }
        // Split input gives the same answer.
        assert_eq!(
            mac.mac(&[&msg[..7], &msg[7..40]]).as_slice(),
            h(cases[2].1).as_slice()
        );
    }

    macro_rules! cmac_ref {
        ($c:ty, $key:expr, $msg:expr) => {{
            let mut m = <cmac::Cmac<$c> as KeyInit>::new_from_slice($key).unwrap();
            m.update($msg);
            let out = m.finalize().into_bytes().to_vec();
            out
        }};
    }

    proptest! {
        #[test]
        fn cmac_matches_rustcrypto(key in proptest::collection::vec(any::<u8>(), 32), msg in proptest::collection::vec(any::<u8>(), 0..100), split in 0usize..100) {
            let split = split.min(msg.len());
            let (a, b) = msg.split_at(split);
            let ours = Cmac::new(&Aes256::new_from_slice(&key).unwrap()).mac(&[a, b]);
            let theirs = cmac_ref!(Aes256, &key, &msg);
            prop_assert_eq!(ours.as_slice(), theirs.as_slice());
            let ours = Cmac::new(&TdesEde3::new_from_slice(&key[..24]).unwrap()).mac(&[a, b]);
            let theirs = cmac_ref!(TdesEde3, &key[..24], &msg);
            prop_assert_eq!(ours.as_slice(), theirs.as_slice());
            let ours = Cmac::new(&TdesEde2::new_from_slice(&key[..16]).unwrap()).mac(&[a, b]);
            let theirs = cmac_ref!(TdesEde2, &key[..16], &msg);
            prop_assert_eq!(ours.as_slice(), theirs.as_slice());
        }

        #[test]
        fn cbc_and_ctr_match_rustcrypto(key in proptest::collection::vec(any::<u8>(), 32), iv in proptest::collection::vec(any::<u8>(), 16), blocks in 1usize..24) {
            let plain: alloc::vec::Vec<u8> = (0..=255u8).cycle().step_by(7).take(blocks * 16).collect();
            let cipher = Aes256::new_from_slice(&key).unwrap();
            let mut ours = plain.clone();
            cbc_encrypt(&cipher, &iv, &mut ours);
            let mut theirs = plain.clone();
            let enc = cbc::Encryptor::<Aes256>::new_from_slices(&key, &iv).unwrap();
            let (chunks, _) = Block::<Aes256>::slice_as_chunks_mut(&mut theirs);
            let mut enc = enc;
            enc.encrypt_blocks(chunks);
            prop_assert_eq!(&ours, &theirs);
            let mut dec = cbc::Decryptor::<Aes256>::new_from_slices(&key, &iv).unwrap();
            let mut back = theirs.clone();
            let (chunks, _) = Block::<Aes256>::slice_as_chunks_mut(&mut back);
            dec.decrypt_blocks(chunks);
            cbc_decrypt(&cipher, &iv, &mut ours);
            prop_assert_eq!(&ours, &plain);
            prop_assert_eq!(&back, &plain);

            let mut ours = plain.clone();
            let counter = Block::<Aes256>::try_from(iv.as_slice()).unwrap();
            ctr_apply(&cipher, &counter, &mut ours[..blocks * 16 - 3]);
            let mut theirs = plain;
            let mut ctr = ctr::Ctr128BE::<Aes256>::new_from_slices(&key, &iv).unwrap();
            ctr.apply_keystream(&mut theirs[..blocks * 16 - 3]);
            prop_assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn ctr_carries_across_bytes() {
        let cipher = Aes128::new_from_slice(&[9; 16]).unwrap();
        let iv = [0xFFu8; 16];
        let mut ours = [0u8; 48];
        ctr_apply(&cipher, &Block::<Aes128>::from(iv), &mut ours);
        let mut theirs = [0u8; 48];
        ctr::Ctr128BE::<Aes128>::new_from_slices(&[9; 16], &iv)
            .unwrap()
            .apply_keystream(&mut theirs);
        assert_eq!(ours, theirs);
    }

    #[test]
    fn cbc_mac_needs_whole_blocks() {
        let cipher = TdesEde2::new_from_slice(&[1; 16]).unwrap();
        assert!(cbc_mac(&cipher, &[b"1234567"]).is_none());
        assert!(cbc_mac(&cipher, &[]).is_none());
        let one = cbc_mac(&cipher, &[b"12345678"]).unwrap();
        let mut expect = Block::<TdesEde2>::try_from(&b"12345678"[..]).unwrap();
        cipher.encrypt_block(&mut expect);
        assert_eq!(one, expect);
    }

    #[test]
    fn long_cbc_uses_the_block_by_block_path() {
        let cipher = Aes128::new_from_slice(&[3; 16]).unwrap();
        let plain: alloc::vec::Vec<u8> = (0..=255u8).cycle().take(1024).collect();
        let mut data = plain.clone();
        cbc_encrypt(&cipher, &[5; 16], &mut data);
        cbc_decrypt(&cipher, &[5; 16], &mut data);
        assert_eq!(data, plain);
    }
}
