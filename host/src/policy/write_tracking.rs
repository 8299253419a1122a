//! Where a policy wrote, so the state reset rewrites only that part of its memory.
//!
//! Why: the reset restored the whole initial memory after every request, 64 KiB for an SDK
//! policy (a 32 KiB stack, its data, a 24 KiB arena), while a request writes a few KiB of it:
//! the top of the stack, the allocator's state, the start of the arena. Rewriting 64 KiB per
//! request evicts the rest of the request's data from the core's caches; skipping the zeroing
//! altogether (an experiment that left the previous request's bytes behind) measured 8 % less
//! CPU per hit in the default mode.
//!
//! How, without trusting the plugin: the host rewrites the module so that every write to its
//! memory marks the block it falls in (one bit per 64th of the initial memory: 1 KiB blocks
//! for one page); the reset rewrites the marked blocks and nothing else.
//! - Each store, `memory.fill` and `memory.copy` sets its bits in a local of its function
//!   first (a shift and an OR, on registers); the function ORs them into a global of the
//!   host's before each way out of it (the end, `return`, a tail call, a branch to the
//!   function's own label). A trap on the way leaves them unmarked, but an instance that
//!   trapped is never used again.
//! - What the host itself writes into the memory is what wasmtime copies into blocks the
//!   plugin's allocator (`cabi_realloc`) returns: that export is wrapped so the blocks it
//!   returns are marked too. An import could also write through a pointer it is given, so a
//!   call to any import marks the whole memory.
//! - The module may only use instructions whose writes are covered here: modules using
//!   atomics, exceptions, GC or several memories, or whose tables can hold an import (reached
//!   by `call_indirect`), keep the reset that rewrites everything.

use wasm_encoder::reencode::{Reencode, RoundtripReencoder};
use wasm_encoder::{Function, Instruction, ValType};
use wasmparser::{FunctionBody, Operator, Parser, Payload, WasmFeatures};

/// Where the rewritten module marks the blocks it wrote: one bit per 64th of its initial
/// memory (1 KiB blocks for one page), in an `i64` global of the host's.
#[derive(Clone, Copy)]
pub(super) struct WrittenBlocks {
    pub global: u32,
    /// log2 of a block's bytes.
    pub shift: u32,
}

impl WrittenBlocks {
    /// The blocks of a memory of `memory_bytes`, marked in `global`.
    pub fn new(global: u32, memory_bytes: u64) -> Self {
        let block = memory_bytes.div_ceil(64).max(1).next_power_of_two();
        Self {
            global,
            shift: block.trailing_zeros(),
        }
    }

    /// A store marks the block it starts in; it may run on into the next by up to this
    /// many bytes (a 16-byte `v128.store` at a block's last byte), which the reset restores
    /// with its block.
    const SPILL: i32 = 15;
}

/// Whether every write of `module` can be tracked; the reason when not.
pub(super) fn check(module: &[u8], imported_functions: u32) -> Result<(), String> {
    let features = WasmFeatures::default()
        - WasmFeatures::THREADS
        - WasmFeatures::SHARED_EVERYTHING_THREADS
        - WasmFeatures::EXCEPTIONS
        - WasmFeatures::LEGACY_EXCEPTIONS
        - WasmFeatures::GC
        - WasmFeatures::STACK_SWITCHING
        - WasmFeatures::MULTI_MEMORY
        - WasmFeatures::MEMORY64
        - WasmFeatures::MEMORY_CONTROL
        - WasmFeatures::CUSTOM_PAGE_SIZES;
    wasmparser::Validator::new_with_features(features)
        .validate_all(module)
        .map_err(|e| format!("it uses instructions whose writes are not tracked: {e}"))?;
    let imported = |index: u32| index < imported_functions;
    for payload in Parser::new(0).parse_all(module) {
        match payload.map_err(|e| e.to_string())? {
            Payload::ElementSection(reader) => {
                for element in reader {
                    let items = element.map_err(|e| e.to_string())?.items;
                    let holds_import = match items {
                        wasmparser::ElementItems::Functions(functions) => {
                            functions.into_iter().any(|f| f.map_or(true, imported))
                        }
                        wasmparser::ElementItems::Expressions(..) => true,
                    };
                    if holds_import {
                        return Err("a table may hold an imported function".into());
                    }
                }
            }
            Payload::CodeSectionEntry(body) => {
                let mut operators = body.get_operators_reader().map_err(|e| e.to_string())?;
                while !operators.eof() {
                    if let Operator::RefFunc { function_index } =
                        operators.read().map_err(|e| e.to_string())?
                    {
                        if imported(function_index) {
                            return Err("it takes a reference to an imported function".into());
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// What a memory-writing operator writes: its static offset and width, or a length taken
/// from the stack.
enum Write {
    /// A store at the address on the stack plus `offset`, of at most 16 bytes (see
    /// [`WrittenBlocks::SPILL`]); the stored value (of type `value`) is above the address.
    Store { offset: u64, value: ValType },
    /// `memory.fill`: destination, value, length.
    Fill,
    /// `memory.copy`: destination, source, length.
    Copy,
}

fn write_of(op: &Operator<'_>) -> Option<Write> {
    use Operator as O;
    let store = |memarg: &wasmparser::MemArg, value| Write::Store {
        offset: memarg.offset,
        value,
    };
    Some(match op {
        O::I32Store { memarg } => store(memarg, ValType::I32),
        O::I32Store8 { memarg } => store(memarg, ValType::I32),
        O::I32Store16 { memarg } => store(memarg, ValType::I32),
        O::I64Store { memarg } => store(memarg, ValType::I64),
        O::I64Store8 { memarg } => store(memarg, ValType::I64),
        O::I64Store16 { memarg } => store(memarg, ValType::I64),
        O::I64Store32 { memarg } => store(memarg, ValType::I64),
        O::F32Store { memarg } => store(memarg, ValType::F32),
        O::F64Store { memarg } => store(memarg, ValType::F64),
        O::V128Store { memarg } => store(memarg, ValType::V128),
        O::V128Store8Lane { memarg, .. } => store(memarg, ValType::V128),
        O::V128Store16Lane { memarg, .. } => store(memarg, ValType::V128),
        O::V128Store32Lane { memarg, .. } => store(memarg, ValType::V128),
        O::V128Store64Lane { memarg, .. } => store(memarg, ValType::V128),
        O::MemoryFill { .. } => Write::Fill,
        O::MemoryCopy { .. } => Write::Copy,
        _ => return None,
    })
}

/// The locals an instrumented function adds after its own.
struct Scratch {
    marks: u32,
    addr: u32,
    len: u32,
    other: u32,
    i64: u32,
    f32: u32,
    f64: u32,
    v128: Option<u32>,
}

impl Scratch {
    fn value(&self, ty: ValType) -> u32 {
        match ty {
            ValType::I64 => self.i64,
            ValType::F32 => self.f32,
            ValType::F64 => self.f64,
            ValType::V128 => self.v128.expect("a v128 local for a v128 store"),
            // i32 values are kept in `other`, as `memory.fill`'s value and `memory.copy`'s source.
            _ => self.other,
        }
    }
}

/// The body of a defined function with its writes tracked, or `None` when it writes nothing
/// and calls no import (it is then copied as it is).
pub(super) fn instrument(
    body: &FunctionBody<'_>,
    params: u32,
    imported_functions: u32,
    blocks: WrittenBlocks,
) -> Result<Option<Function>, String> {
    let err = |e: wasmparser::BinaryReaderError| e.to_string();
    let mut operators = Vec::new();
    let mut reader = body.get_operators_reader().map_err(err)?;
    while !reader.eof() {
        operators.push(reader.read().map_err(err)?);
    }
    let calls_import = |op: &Operator<'_>| matches!(op, Operator::Call { function_index } if *function_index < imported_functions);
    let writes = |op: &Operator<'_>| write_of(op).is_some() || calls_import(op);
    if !operators.iter().any(writes) {
        return Ok(None);
    }
    let mut locals = Vec::new();
    let mut count = params;
    for local in body.get_locals_reader().map_err(err)? {
        let (n, ty) = local.map_err(err)?;
        let ty = RoundtripReencoder
            .val_type(ty)
            .map_err(|e| format!("cannot rewrite: {e}"))?;
        locals.extend(std::iter::repeat_n(ty, n as usize));
        count += n;
    }
    let mut add = |ty| {
        locals.push(ty);
        count += 1;
        count - 1
    };
    let mut scratch = Scratch {
        marks: add(ValType::I64),
        addr: add(ValType::I32),
        len: add(ValType::I32),
        other: add(ValType::I32),
        i64: add(ValType::I64),
        f32: add(ValType::F32),
        f64: add(ValType::F64),
        v128: None,
    };
    let stores_v128 = operators.iter().any(|op| {
        matches!(
            write_of(op),
            Some(Write::Store {
                value: ValType::V128,
                ..
            })
        )
    });
    if stores_v128 {
        scratch.v128 = Some(add(ValType::V128));
    }

    let mut f = Function::new_with_locals_types(locals);
    // Blocks open around the current instruction: a branch to this depth leaves the function.
    let mut depth = 0u32;
    for op in operators {
        let leaves = match &op {
            Operator::Return
            | Operator::ReturnCall { .. }
            | Operator::ReturnCallIndirect { .. }
            | Operator::ReturnCallRef { .. } => true,
            Operator::End => depth == 0,
            Operator::Br { relative_depth }
            | Operator::BrIf { relative_depth }
            | Operator::BrOnNull { relative_depth }
            | Operator::BrOnNonNull { relative_depth } => *relative_depth == depth,
            Operator::BrTable { targets } => {
                targets.default() == depth
                    || targets.targets().any(|t| t.map_or(true, |t| t == depth))
            }
            _ => false,
        };
        match &op {
            Operator::Block { .. }
            | Operator::Loop { .. }
            | Operator::If { .. }
            | Operator::TryTable { .. } => depth += 1,
            Operator::End if depth > 0 => depth -= 1,
            _ => {}
        }
        if leaves {
            // What the function wrote stays marked once it has returned. (This leaves the
            // operand stack as it was, results included.)
            f.instruction(&Instruction::GlobalGet(blocks.global))
                .instruction(&Instruction::LocalGet(scratch.marks))
                .instruction(&Instruction::I64Or)
                .instruction(&Instruction::GlobalSet(blocks.global));
        }
        if calls_import(&op) {
            // An import may write anywhere it is pointed: the whole memory.
            f.instruction(&Instruction::I64Const(-1))
                .instruction(&Instruction::LocalSet(scratch.marks));
        }
        match write_of(&op) {
            Some(Write::Store { offset, value, .. }) => {
                let offset = u32::try_from(offset).map_err(|_| "a 64-bit memory offset")?;
                let value = scratch.value(value);
                // marks |= 1 << ((address + offset) >> shift)
                f.instruction(&Instruction::LocalSet(value))
                    .instruction(&Instruction::LocalSet(scratch.addr))
                    .instruction(&Instruction::I64Const(1))
                    .instruction(&Instruction::LocalGet(scratch.addr));
                if offset != 0 {
                    f.instruction(&Instruction::I32Const(offset as i32))
                        .instruction(&Instruction::I32Add);
                }
                f.instruction(&Instruction::I32Const(blocks.shift as i32))
                    .instruction(&Instruction::I32ShrU)
                    .instruction(&Instruction::I64ExtendI32U)
                    .instruction(&Instruction::I64Shl)
                    .instruction(&Instruction::LocalGet(scratch.marks))
                    .instruction(&Instruction::I64Or)
                    .instruction(&Instruction::LocalSet(scratch.marks))
                    .instruction(&Instruction::LocalGet(scratch.addr))
                    .instruction(&Instruction::LocalGet(value));
            }
            Some(Write::Fill | Write::Copy) => {
                // Destination, value or source, length: every block of [destination, +length).
                f.instruction(&Instruction::LocalSet(scratch.len))
                    .instruction(&Instruction::LocalSet(scratch.other))
                    .instruction(&Instruction::LocalSet(scratch.addr));
                blocks_of(&mut f, scratch.addr, scratch.len, blocks.shift);
                f.instruction(&Instruction::LocalGet(scratch.marks))
                    .instruction(&Instruction::I64Or)
                    .instruction(&Instruction::LocalSet(scratch.marks))
                    .instruction(&Instruction::LocalGet(scratch.addr))
                    .instruction(&Instruction::LocalGet(scratch.other))
                    .instruction(&Instruction::LocalGet(scratch.len));
            }
            None => {}
        }
        let op = RoundtripReencoder
            .instruction(op)
            .map_err(|e| format!("cannot rewrite: {e}"))?;
        f.instruction(&op);
    }
    Ok(Some(f))
}

/// Pushes the mask of the blocks `[start, start + len)` covers (the block of `start` when
/// `len` is 0): `(-1 << first) & (-1 >> (63 - last))`. An address past the memory gives a
/// mask that means nothing, but then the write traps and the instance is never used again.
fn blocks_of(f: &mut Function, start: u32, len: u32, shift: u32) {
    let shift = shift as i32;
    f.instruction(&Instruction::I64Const(-1))
        .instruction(&Instruction::LocalGet(start))
        .instruction(&Instruction::I32Const(shift))
        .instruction(&Instruction::I32ShrU)
        .instruction(&Instruction::I64ExtendI32U)
        .instruction(&Instruction::I64Shl)
        .instruction(&Instruction::I64Const(-1))
        .instruction(&Instruction::I32Const(63))
        // last = (start + max(len, 1) - 1) >> shift
        .instruction(&Instruction::LocalGet(start))
        .instruction(&Instruction::LocalGet(len))
        .instruction(&Instruction::I32Const(1))
        .instruction(&Instruction::LocalGet(len))
        .instruction(&Instruction::I32Const(1))
        .instruction(&Instruction::I32GtU)
        .instruction(&Instruction::Select)
        .instruction(&Instruction::I32Add)
        .instruction(&Instruction::I32Const(1))
        .instruction(&Instruction::I32Sub)
        .instruction(&Instruction::I32Const(shift))
        .instruction(&Instruction::I32ShrU)
        .instruction(&Instruction::I32Sub)
        .instruction(&Instruction::I64ExtendI32U)
        .instruction(&Instruction::I64ShrU)
        .instruction(&Instruction::I64And);
}

/// `(ptr, old_size, align, new_size) -> ptr` calling the plugin's `realloc` and marking the
/// blocks it returns: the host copies strings and lists into them.
pub(super) fn realloc_wrapper(realloc: u32, blocks: WrittenBlocks) -> Function {
    let returned = 4;
    let mut f = Function::new([(1, ValType::I32)]);
    for param in 0..4 {
        f.instruction(&Instruction::LocalGet(param));
    }
    f.instruction(&Instruction::Call(realloc))
        .instruction(&Instruction::LocalSet(returned))
        .instruction(&Instruction::GlobalGet(blocks.global));
    blocks_of(&mut f, returned, 3, blocks.shift);
    f.instruction(&Instruction::I64Or)
        .instruction(&Instruction::GlobalSet(blocks.global))
        .instruction(&Instruction::LocalGet(returned))
        .instruction(&Instruction::End);
    f
}

/// The locals [`restore_written`] uses: one `i64`, then seven `i32`s.
pub(super) const RESTORE_LOCALS: [(u32, ValType); 2] = [(1, ValType::I64), (7, ValType::I32)];

/// The reset of a tracked module, after its check of the memory's size: each run of written
/// blocks (and the [`WrittenBlocks::SPILL`] bytes after it), clamped to the memory, rewritten
/// to zeros and then to the parts of the data segments (`first_passive + i`, copies of the
/// segments at `segments[i].0`) that fall in it, in their order; then nothing marked.
pub(super) fn restore_written(
    f: &mut Function,
    memory_bytes: u64,
    segments: &[(u32, usize)],
    first_passive: u32,
    blocks: WrittenBlocks,
) {
    let (bits, first, run, after) = (0, 1, 2, 3);
    let (lo, hi, start, end) = (4, 5, 6, 7);
    let shift = blocks.shift as i32;
    let memory_end = memory_bytes as i32;
    let min = |f: &mut Function, local: u32, bound: i32| {
        f.instruction(&Instruction::LocalGet(local))
            .instruction(&Instruction::I32Const(bound))
            .instruction(&Instruction::LocalGet(local))
            .instruction(&Instruction::I32Const(bound))
            .instruction(&Instruction::I32LtU)
            .instruction(&Instruction::Select)
            .instruction(&Instruction::LocalSet(local));
    };
    f.instruction(&Instruction::GlobalGet(blocks.global))
        .instruction(&Instruction::LocalSet(bits))
        .instruction(&Instruction::Block(wasm_encoder::BlockType::Empty))
        .instruction(&Instruction::Loop(wasm_encoder::BlockType::Empty))
        .instruction(&Instruction::LocalGet(bits))
        .instruction(&Instruction::I64Eqz)
        .instruction(&Instruction::BrIf(1))
        // first = ctz(bits); run = ctz(!(bits >> first)); after = first + run
        .instruction(&Instruction::LocalGet(bits))
        .instruction(&Instruction::I64Ctz)
        .instruction(&Instruction::I32WrapI64)
        .instruction(&Instruction::LocalSet(first))
        .instruction(&Instruction::LocalGet(bits))
        .instruction(&Instruction::LocalGet(first))
        .instruction(&Instruction::I64ExtendI32U)
        .instruction(&Instruction::I64ShrU)
        .instruction(&Instruction::I64Const(-1))
        .instruction(&Instruction::I64Xor)
        .instruction(&Instruction::I64Ctz)
        .instruction(&Instruction::I32WrapI64)
        .instruction(&Instruction::LocalSet(run))
        .instruction(&Instruction::LocalGet(first))
        .instruction(&Instruction::LocalGet(run))
        .instruction(&Instruction::I32Add)
        .instruction(&Instruction::LocalSet(after))
        // bits = after < 64 ? (bits >> after) << after : 0 (the run and all below it gone)
        .instruction(&Instruction::LocalGet(bits))
        .instruction(&Instruction::LocalGet(after))
        .instruction(&Instruction::I64ExtendI32U)
        .instruction(&Instruction::I64ShrU)
        .instruction(&Instruction::LocalGet(after))
        .instruction(&Instruction::I64ExtendI32U)
        .instruction(&Instruction::I64Shl)
        .instruction(&Instruction::I64Const(0))
        .instruction(&Instruction::LocalGet(after))
        .instruction(&Instruction::I32Const(64))
        .instruction(&Instruction::I32LtU)
        .instruction(&Instruction::Select)
        .instruction(&Instruction::LocalSet(bits))
        // [lo, hi) = [first << shift, min((after << shift) + SPILL, memory end))
        .instruction(&Instruction::LocalGet(first))
        .instruction(&Instruction::I32Const(shift))
        .instruction(&Instruction::I32Shl)
        .instruction(&Instruction::LocalSet(lo))
        .instruction(&Instruction::LocalGet(after))
        .instruction(&Instruction::I32Const(shift))
        .instruction(&Instruction::I32Shl)
        .instruction(&Instruction::I32Const(WrittenBlocks::SPILL))
        .instruction(&Instruction::I32Add)
        .instruction(&Instruction::LocalSet(hi));
    min(f, hi, memory_end);
    f.instruction(&Instruction::LocalGet(lo))
        .instruction(&Instruction::I32Const(0))
        .instruction(&Instruction::LocalGet(hi))
        .instruction(&Instruction::LocalGet(lo))
        .instruction(&Instruction::I32Sub)
        .instruction(&Instruction::MemoryFill(0));
    for (i, &(offset, len)) in segments.iter().enumerate() {
        let (seg_start, seg_end) = (offset as i32, (offset as usize + len) as i32);
        // start = max(lo, segment start); end = min(hi, segment end).
        f.instruction(&Instruction::LocalGet(lo))
            .instruction(&Instruction::I32Const(seg_start))
            .instruction(&Instruction::LocalGet(lo))
            .instruction(&Instruction::I32Const(seg_start))
            .instruction(&Instruction::I32GtU)
            .instruction(&Instruction::Select)
            .instruction(&Instruction::LocalSet(start))
            .instruction(&Instruction::LocalGet(hi))
            .instruction(&Instruction::LocalSet(end));
        min(f, end, seg_end);
        f.instruction(&Instruction::LocalGet(start))
            .instruction(&Instruction::LocalGet(end))
            .instruction(&Instruction::I32LtU)
            .instruction(&Instruction::If(wasm_encoder::BlockType::Empty))
            .instruction(&Instruction::LocalGet(start))
            .instruction(&Instruction::LocalGet(start))
            .instruction(&Instruction::I32Const(seg_start))
            .instruction(&Instruction::I32Sub)
            .instruction(&Instruction::LocalGet(end))
            .instruction(&Instruction::LocalGet(start))
            .instruction(&Instruction::I32Sub)
            .instruction(&Instruction::MemoryInit {
                mem: 0,
                data_index: first_passive + i as u32,
            })
            .instruction(&Instruction::End);
    }
    f.instruction(&Instruction::Br(0))
        .instruction(&Instruction::End)
        .instruction(&Instruction::End)
        .instruction(&Instruction::I64Const(0))
        .instruction(&Instruction::GlobalSet(blocks.global));
}
