//! The guest's allocator (wasm32): a bump arena. The host runs every
//! request on a fresh instance and throws its whole linear memory away
//! afterwards, so nothing needs to be freed one by one: allocating is a
//! pointer bump and freeing does nothing, except that the newest
//! allocation can grow or shrink in place and be given back (which covers
//! the buffer being filled while parsing or serialising JSON).
//!
//! The arena starts in the free end of the initial memory and then takes
//! pages from the end of linear memory (`memory.grow`), at least [`CHUNK`]
//! at a time; a call that runs out of memory traps, as with any allocator.

/// A wasm page.
const PAGE: usize = 64 * 1024;
/// The least the arena grows by.
const CHUNK: usize = 16 * PAGE;

/// Where the arena's memory comes from.
pub trait Pages {
    /// The free region the module starts with: (first byte, end).
    fn initial(&mut self) -> (usize, usize);
    /// Appends `pages` to memory; answers the previous size in pages, or
    /// `usize::MAX` when memory cannot grow.
    fn grow(&mut self, pages: usize) -> usize;
}

/// The bookkeeping of a bump arena over some [`Pages`] (no memory access).
pub struct Arena<P> {
    pages: P,
    started: bool,
    /// Next free byte and the end of the current chunk.
    next: usize,
    end: usize,
    /// Start of the newest allocation, the one that may move in place.
    last: Option<usize>,
}

fn align_up(addr: usize, align: usize) -> Option<usize> {
    addr.checked_add(align - 1).map(|a| a & !(align - 1))
}

impl<P> Arena<P> {
    pub const fn new(pages: P) -> Arena<P> {
        Arena { pages, started: false, next: 0, end: 0, last: None }
    }
}

impl<P: Pages> Arena<P> {
    /// The address of a new block of `size` bytes at `align` (None: no memory).
    pub fn alloc(&mut self, size: usize, align: usize) -> Option<usize> {
        if !self.started {
            self.started = true;
            (self.next, self.end) = self.pages.initial();
        }
        loop {
            let start = align_up(self.next, align)?;
            let stop = start.checked_add(size)?;
            if stop <= self.end {
                self.next = stop;
                self.last = Some(start);
                return Some(start);
            }
            self.grow(size.checked_add(align)?)?;
        }
    }

    /// Gives the block at `addr` back if it is the newest.
    pub fn free(&mut self, addr: usize) {
        if self.last == Some(addr) {
            self.next = addr;
            self.last = None;
        }
    }

    /// Resizes the newest block in place (taking memory right after it if
    /// needed); false when `addr` is not the newest or memory is out.
    pub fn resize_in_place(&mut self, addr: usize, new_size: usize) -> bool {
        if self.last != Some(addr) {
            return false;
        }
        let Some(stop) = addr.checked_add(new_size) else { return false };
        if stop > self.end && self.grow(stop - self.end) != Some(true) {
            return false;
        }
        self.next = stop;
        true
    }

    /// Takes at least `at_least` more bytes from the end of memory; answers
    /// whether they continue the current chunk (None: memory is out).
    fn grow(&mut self, at_least: usize) -> Option<bool> {
        let pages = at_least.max(CHUNK).div_ceil(PAGE);
        let previous = self.pages.grow(pages);
        if previous == usize::MAX {
            return None;
        }
        let start = previous.checked_mul(PAGE)?;
        let adjacent = start == self.end;
        if !adjacent {
            // Start over in the new chunk; the rest of the old one stays unused.
            self.next = start;
            self.last = None;
        }
        self.end = start.checked_add(pages.checked_mul(PAGE)?)?;
        Some(adjacent)
    }
}

/// The global allocator over the instance's linear memory (wasm32 only).
#[cfg(target_arch = "wasm32")]
pub mod global {
    use core::alloc::{GlobalAlloc, Layout};
    use core::cell::UnsafeCell;

    use super::{Arena, Pages, PAGE};

    /// The instance's linear memory.
    pub struct LinearMemory;

    impl Pages for LinearMemory {
        fn initial(&mut self) -> (usize, usize) {
            extern "C" {
                static __heap_base: u8;
            }
            // Only the symbol's address is taken.
            let base = core::ptr::addr_of!(__heap_base) as usize;
            let end = core::arch::wasm32::memory_size(0) * PAGE;
            (base.min(end), end)
        }

        fn grow(&mut self, pages: usize) -> usize {
            core::arch::wasm32::memory_grow(0, pages)
        }
    }

    /// The global allocator: an [`Arena`] over the linear memory.
    pub struct BumpArena(UnsafeCell<Arena<LinearMemory>>);

    // SAFETY: a wasm32 guest instance runs one thread.
    unsafe impl Sync for BumpArena {}

    impl BumpArena {
        pub const fn new() -> BumpArena {
            BumpArena(UnsafeCell::new(Arena::new(LinearMemory)))
        }
    }

    impl Default for BumpArena {
        fn default() -> Self {
            BumpArena::new()
        }
    }

    // SAFETY: every block lies in memory the arena owns (the initial heap or
    // pages it grew) and is never handed out twice while live; `dealloc` and
    // `realloc` move the bump pointer back only over the newest block.
    unsafe impl GlobalAlloc for BumpArena {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: one thread, and the allocator never reenters itself.
            let arena = unsafe { &mut *self.0.get() };
            arena.alloc(layout.size(), layout.align()).map_or(core::ptr::null_mut(), |a| a as *mut u8)
        }

        unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
            // SAFETY: as in `alloc`.
            unsafe { &mut *self.0.get() }.free(ptr as usize);
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            // SAFETY: as in `alloc`.
            let arena = unsafe { &mut *self.0.get() };
            if arena.resize_in_place(ptr as usize, new_size) {
                return ptr;
            }
            let Some(moved) = arena.alloc(new_size, layout.align()) else { return core::ptr::null_mut() };
            let moved = moved as *mut u8;
            // SAFETY: two live, distinct blocks (the new one lies past the old).
            unsafe { core::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size)) };
            moved
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Memory of `size` pages that grows by appending, up to `max` pages.
    struct Fake {
        size: usize,
        max: usize,
        /// Pages some other allocator takes before each of ours.
        interleave: usize,
    }

    impl Pages for Fake {
        fn initial(&mut self) -> (usize, usize) {
            (PAGE / 2, self.size * PAGE)
        }
        fn grow(&mut self, pages: usize) -> usize {
            self.size += self.interleave;
            if self.size + pages > self.max {
                return usize::MAX;
            }
            let previous = self.size;
            self.size += pages;
            previous
        }
    }

    #[test]
    fn allocations_bump_and_the_newest_grows_shrinks_and_frees_in_place() {
        let mut arena = Arena::new(Fake { size: 1, max: 1000, interleave: 0 });
        let a = arena.alloc(10, 8).unwrap();
        assert_eq!(a, PAGE / 2, "starts in the initial memory's free end");
        let b = arena.alloc(100, 16).unwrap();
        assert_eq!(b % 16, 0);
        assert!(b >= a + 10);
        assert!(!arena.resize_in_place(a, 20), "only the newest moves");
        assert!(arena.resize_in_place(b, 5000));
        let c = arena.alloc(1, 1).unwrap();
        assert_eq!(c, b + 5000);
        arena.free(c);
        assert_eq!(arena.alloc(1, 1).unwrap(), c, "the newest block is given back");
        arena.free(a);
        assert!(arena.alloc(1, 1).unwrap() > c, "an older block is not");
    }

    #[test]
    fn the_newest_block_grows_past_the_chunk_into_adjacent_pages() {
        let mut arena = Arena::new(Fake { size: 1, max: 1000, interleave: 0 });
        let a = arena.alloc(PAGE / 4, 8).unwrap();
        assert!(arena.resize_in_place(a, 3 * CHUNK), "the pages after it are taken");
        let b = arena.alloc(8, 8).unwrap();
        assert_eq!(b, a + 3 * CHUNK);
    }

    #[test]
    fn pages_taken_by_someone_else_start_a_new_chunk_and_memory_runs_out() {
        let mut arena = Arena::new(Fake { size: 1, max: 40, interleave: 1 });
        let a = arena.alloc(PAGE, 8).unwrap();
        assert_eq!(a, 2 * PAGE, "the pages after the foreign one");
        assert!(!arena.resize_in_place(a, CHUNK * 2), "not adjacent: moved by realloc instead");
        assert_eq!(arena.alloc(CHUNK * 3, 8), None, "out of memory");
    }
}
