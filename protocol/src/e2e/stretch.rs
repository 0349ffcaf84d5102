//! The password-stretching function OPAQUE runs on the client at every login: Argon2id, with
//! the all-zero salt `opaque-ke` uses (OPAQUE's OPRF already makes the input unique per
//! password and office PC).
//!
//! **Parameters.** New records use OWASP's minimum memory and passes (19 MiB, 2 passes) in
//! 2 lanes ([`StretchParams::CURRENT`]). The lanes run on two cores, so a login waits about
//! half as long; RFC 9106 recommends as many lanes as the hashing side has threads. The cost to
//! a guesser on GPUs, which are bound by memory, is that of OWASP's minimum; on custom hardware,
//! where memory × time is the measure, two lanes let a guess finish in half the time, so there
//! it is up to half of OWASP's single-lane figure. Records made before carry no parameters and
//! mean OWASP's single-lane minimum ([`StretchParams::LEGACY`]). The agent tells the client
//! which parameters its record uses; the client refuses any below one of OWASP's rows (19 MiB
//! with 2 or more passes, or 46 MiB with 1) or beyond what it will spend, so a relay can
//! neither make it hash with weak parameters nor make it allocate without bound.
//!
//! **Memory.** The client is a fresh process for every session, so the working memory is
//! always new. Taken from the heap it costs a page fault per 4 KiB page, about 10 ms for
//! 19 MiB on our benchmark machine: as long as the hashing itself. Mapped with transparent
//! huge pages and touched once per 2 MiB, it is usually ready in under a millisecond (the
//! kernel may first compact memory to find huge pages). Where huge pages are not available the
//! kernel ignores the advice: slower, never wrong.

use argon2::{Algorithm, Argon2, Block, Params, Version};
use serde::{Deserialize, Serialize};

/// The salt `opaque-ke` passes to Argon2.
const SALT: [u8; argon2::RECOMMENDED_SALT_LEN] = [0; argon2::RECOMMENDED_SALT_LEN];

/// Argon2id cost parameters, as the agent's record stores them and tells the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StretchParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over the memory.
    pub passes: u32,
    /// Lanes, computed in parallel.
    pub lanes: u32,
}

/// Why a client refuses the parameters it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StretchParamsError {
    /// Cheaper than OWASP's minimum: a login must never stretch the password less.
    #[error("the password stretching offered is weaker than the minimum")]
    TooWeak,
    /// More memory, passes or lanes than a client will spend.
    #[error("the password stretching offered is too costly to compute")]
    TooCostly,
}

impl StretchParams {
    /// What new records use: 19 MiB, 2 passes, 2 lanes.
    pub const CURRENT: Self = Self {
        memory_kib: 19 * 1024,
        passes: 2,
        lanes: 2,
    };

    /// What records without parameters use: OWASP's minimum, 19 MiB, 2 passes, 1 lane.
    pub const LEGACY: Self = Self {
        memory_kib: 19 * 1024,
        passes: 2,
        lanes: 1,
    };

    /// Most memory a client will spend on one login (256 MiB).
    const MAX_MEMORY_KIB: u32 = 256 * 1024;
    /// Most passes a client will spend.
    const MAX_PASSES: u32 = 8;
    /// Most lanes a client will run.
    const MAX_LANES: u32 = 8;

    /// Least memory for one pass: OWASP's single-pass row (46 MiB).
    const MIN_MEMORY_KIB_ONE_PASS: u32 = 46 * 1024;

    /// Accepts parameters that meet one of OWASP's rows (at least 19 MiB with 2 or more passes,
    /// or at least 46 MiB with 1) and are within what a client will spend.
    ///
    /// # Errors
    /// [`StretchParamsError`] otherwise.
    pub fn check(self) -> Result<Self, StretchParamsError> {
        let meets_a_row = match self.passes {
            0 => false,
            1 => self.memory_kib >= Self::MIN_MEMORY_KIB_ONE_PASS,
            _ => self.memory_kib >= Self::LEGACY.memory_kib,
        };
        if !meets_a_row || self.lanes == 0 {
            return Err(StretchParamsError::TooWeak);
        }
        if self.memory_kib > Self::MAX_MEMORY_KIB
            || self.passes > Self::MAX_PASSES
            || self.lanes > Self::MAX_LANES
        {
            return Err(StretchParamsError::TooCostly);
        }
        Ok(self)
    }
}

/// The key-stretching function of [`super::pake::Suite`].
pub struct Stretch {
    argon2: Argon2<'static>,
}

impl Stretch {
    /// Argon2id with `params`.
    ///
    /// # Errors
    /// If Argon2 rejects the parameters (checked ones never are).
    pub fn new(params: StretchParams) -> Result<Self, argon2::Error> {
        let params = Params::new(params.memory_kib, params.passes, params.lanes, None)?;
        Ok(Self {
            argon2: Argon2::new(Algorithm::Argon2id, Version::V0x13, params),
        })
    }

    /// Stretches `input` into `output` (whose length is the hash length).
    ///
    /// # Errors
    /// If `output` has a length Argon2 does not allow.
    pub fn hash_into(&self, input: &[u8], output: &mut [u8]) -> Result<(), argon2::Error> {
        let blocks = self.argon2.params().block_count();
        match WorkingMemory::mapped(blocks) {
            Some(mut memory) => {
                self.argon2
                    .hash_password_into_with_memory(input, &SALT, output, memory.blocks())
            }
            None => {
                let mut memory = vec![Block::default(); blocks];
                self.argon2
                    .hash_password_into_with_memory(input, &SALT, output, &mut memory)
            }
        }
    }
}

impl Default for Stretch {
    /// [`StretchParams::CURRENT`]. `opaque-ke` needs a default; our calls always pass the
    /// parameters explicitly.
    fn default() -> Self {
        // `CURRENT` is valid (the tests stretch with it), so the fallback is never taken.
        Self::new(StretchParams::CURRENT).unwrap_or_else(|_| Self {
            argon2: Argon2::default(),
        })
    }
}

impl opaque_ke::ksf::Ksf for Stretch {
    fn hash<L: generic_array::ArrayLength<u8>>(
        &self,
        input: generic_array::GenericArray<u8, L>,
    ) -> Result<generic_array::GenericArray<u8, L>, opaque_ke::errors::InternalError> {
        let mut output = generic_array::GenericArray::default();
        self.hash_into(&input, &mut output)
            .map_err(|_| opaque_ke::errors::InternalError::KsfError)?;
        Ok(output)
    }
}

/// Transparent huge pages are 2 MiB on the platforms we ship for.
const HUGE_PAGE: usize = 2 * 1024 * 1024;

// Every `Block` is exactly 1,024 bytes of `u64`s: any bytes are a valid block.
const _: () = assert!(std::mem::size_of::<Block>() == Block::SIZE && Block::SIZE == 1024);
const _: () = assert!(HUGE_PAGE.is_multiple_of(std::mem::align_of::<Block>()));

/// Anonymous memory for `blocks` Argon2 blocks, starting on a huge-page boundary.
struct WorkingMemory {
    map: memmap2::MmapMut,
    start: usize,
    blocks: usize,
}

impl WorkingMemory {
    /// Maps and pre-faults the memory; `None` if the system will not map it (the caller
    /// falls back to the heap).
    fn mapped(blocks: usize) -> Option<Self> {
        let len = blocks.checked_mul(Block::SIZE)?;
        let mut map = memmap2::MmapOptions::new()
            .len(len.checked_add(HUGE_PAGE)?)
            .map_anon()
            .ok()?;
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        let start = map.as_ptr().align_offset(HUGE_PAGE);
        if start > HUGE_PAGE {
            return None;
        }
        // One write per huge page faults the whole range in a few dozen faults rather than
        // thousands; with ordinary pages this is no worse than what Argon2 would do anyway.
        for page in map[start..start + len].chunks_mut(HUGE_PAGE) {
            page[0] = 0;
        }
        Some(Self { map, start, blocks })
    }

    fn blocks(&mut self) -> &mut [Block] {
        let bytes = &mut self.map[self.start..self.start + self.blocks * Block::SIZE];
        // SAFETY: `bytes` is `blocks * 1024` initialised bytes (anonymous mappings are
        // zero-filled), starting on a 2 MiB boundary, which is a multiple of `Block`'s
        // alignment (asserted above). `Block` is 1,024 bytes of `u64`s, so every bit pattern
        // is a valid value. The slice borrows `self` mutably, so it is exclusive and cannot
        // outlive the mapping.
        #[allow(unsafe_code)]
        unsafe {
            std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<Block>(), self.blocks)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 9106 section 5.3 (Argon2id, with secret and associated data) cannot be run through
    /// this API, so this checks against the `argon2` crate's own heap-memory path instead: the
    /// mapped memory must not change a single output bit.
    #[test]
    fn same_output_as_the_argon2_crate() {
        for params in [StretchParams::LEGACY, StretchParams::CURRENT] {
            let ours = Stretch::new(params).expect("params");
            let theirs = Argon2::new(
                Algorithm::Argon2id,
                Version::V0x13,
                Params::new(params.memory_kib, params.passes, params.lanes, None).expect("params"),
            );
            for input in [[0u8; 64], [0xa5; 64]] {
                let (mut a, mut b) = ([0u8; 64], [0u8; 64]);
                ours.hash_into(&input, &mut a).expect("ours");
                theirs
                    .hash_password_into(&input, &SALT, &mut b)
                    .expect("theirs");
                assert_eq!(a, b);
            }
        }
    }

    /// Known answer for the legacy parameters, computed with the `argon2` crate 0.5 that made
    /// the records those parameters describe: old records keep opening.
    #[test]
    fn legacy_parameters_match_the_records_made_before() {
        let mut out = [0u8; 64];
        Stretch::new(StretchParams::LEGACY)
            .expect("params")
            .hash_into(&[7u8; 64], &mut out)
            .expect("hash");
        assert_eq!(hex::encode(out), LEGACY_KNOWN_ANSWER);
    }

    const LEGACY_KNOWN_ANSWER: &str = "048e86168a7470db58536fdd2c4deffc067875c94757b5308a7e81ae527a2e5f2ad666cb6147d9f86856ee8bf7ed1c40668fc9861eab738fb4491d3579382947";

    #[test]
    fn parameter_bounds() {
        assert_eq!(StretchParams::CURRENT.check(), Ok(StretchParams::CURRENT));
        assert_eq!(StretchParams::LEGACY.check(), Ok(StretchParams::LEGACY));
        let p = StretchParams::CURRENT;
        for weak in [
            StretchParams {
                memory_kib: 19 * 1024 - 1,
                ..p
            },
            StretchParams {
                memory_kib: 8 * 1024,
                passes: 5,
                lanes: 1,
            },
            StretchParams {
                memory_kib: 19 * 1024,
                passes: 1,
                lanes: 1,
            },
            StretchParams { lanes: 0, ..p },
        ] {
            assert_eq!(weak.check(), Err(StretchParamsError::TooWeak), "{weak:?}");
        }
        for costly in [
            StretchParams {
                memory_kib: u32::MAX,
                ..p
            },
            StretchParams { passes: 9, ..p },
            StretchParams { lanes: 9, ..p },
        ] {
            assert_eq!(
                costly.check(),
                Err(StretchParamsError::TooCostly),
                "{costly:?}"
            );
        }
    }

    #[test]
    fn working_memory_is_aligned_and_sized() {
        let mut memory = WorkingMemory::mapped(19 * 1024).expect("an anonymous mapping");
        let blocks = memory.blocks();
        assert_eq!(blocks.len(), 19 * 1024);
        assert_eq!(blocks.as_ptr() as usize % HUGE_PAGE, 0);
    }
}
