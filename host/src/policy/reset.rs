//! A reset function written into a policy's core module, so that one instance can serve
//! request after request and still start each one in the state a new instance would have.
//!
//! Why: a fresh instance per request (the default) cost about 12 µs of CPU per hit inside the
//! proxy, most of it wasmtime setting up and tearing down a store, a component instance and a
//! pool slot. Restoring a small module's state is a `memory.fill` and a few `memory.init`s.
//!
//! What the injected `cachet-reset` export does, in the module's own code:
//! - refuses (returns false) when the memory has grown: a memory cannot shrink, so the host
//!   drops that instance and makes a new one;
//! - writes the initial memory back: zeros, then the data segments from passive copies of
//!   themselves; only over the blocks the module marked as written where its writes can be
//!   followed (`write_tracking.rs`), over the whole memory otherwise;
//! - sets every mutable global back to its initial constant.
//!
//! That is all the state a core module has when it leaves tables, segments and imports alone,
//! which [`inject`] checks for before writing anything: a module that could change a table,
//! drop a segment, run a start function or hold state outside its one memory is left as it
//! is, and its instances are re-created per request as before. The host writes this function
//! itself and trusts only a reset it wrote: a plugin cannot supply its own.

use super::write_tracking::{self, WrittenBlocks};
use wasm_encoder::reencode::{Reencode, RoundtripReencoder};
use wasm_encoder::{
    CodeSection, ConstExpr, DataCountSection, DataSection, ExportKind, ExportSection, Function,
    FunctionSection, GlobalSection, GlobalType, Instruction, Module, RawSection, TypeSection,
    ValType,
};
use wasmparser::{CompositeInnerType, DataKind, ExternalKind, Operator, Parser, Payload, TypeRef};

/// The export the host calls between two requests.
pub const RESET_EXPORT: &str = "cachet-reset";

/// The world that declares [`RESET_EXPORT`], merged into the policy's own world.
const RESET_WORLD: &str =
    "package cachet:reset;\nworld reset {\n  export cachet-reset: func() -> bool;\n}\n";

/// Larger initial memories are cheaper to re-create than to rewrite per request (wasmtime
/// then keeps only part of them resident, `engine.rs`).
const MAX_RESET_PAGES: u64 = 64;

const PAGE_BYTES: u64 = 64 * 1024;

/// `module` (a core module with its `component-type` world) with the reset export added and
/// declared in its world, or the reason it cannot be reset safely.
pub fn inject(module: &[u8]) -> Result<Vec<u8>, String> {
    // The rewrite below reads the module as a valid one would be (a type section before
    // the functions, say): the plugin's bytes are checked first, not trusted.
    wasmparser::Validator::new()
        .validate_all(module)
        .map_err(|e| format!("not a valid module: {e}"))?;
    let layout = Layout::read(module)?;
    // Restoring only what was written, where every write can be tracked; otherwise the
    // whole memory after every request.
    let tracking = layout.tracking(module).ok();
    let tracked = tracking
        .as_ref()
        .map(|tracking| rewrite(module, &layout, Some(tracking)).and_then(validated));
    let mut rewritten = match tracked {
        Some(Ok(rewritten)) => rewritten,
        // A module the tracking cannot rewrite into a valid one (a case it does not know)
        // keeps the whole reset rather than being refused.
        Some(Err(why)) => {
            tracing::warn!("plugin writes not tracked, the whole memory is reset: {why}");
            rewrite(module, &layout, None)?
        }
        None => rewrite(module, &layout, None)?,
    };
    declare_in_world(&mut rewritten)?;
    Ok(rewritten)
}

/// `module` if it validates.
fn validated(module: Vec<u8>) -> Result<Vec<u8>, String> {
    wasmparser::Validator::new()
        .validate_all(&module)
        .map_err(|e| format!("the rewritten module is not valid: {e}"))?;
    Ok(module)
}

/// How a module's writes are tracked (`write_tracking.rs`): the global the blocks are marked in
/// and the allocator exports wrapped, by export name and the function they named.
struct Tracking {
    blocks: WrittenBlocks,
    reallocs: Vec<(String, u32)>,
}

/// What the reset needs to know about a module, and proof it can be reset.
#[derive(Default)]
struct Layout {
    imported_functions: u32,
    defined_functions: u32,
    memory_pages: u64,
    /// Mutable globals: index and initial value.
    globals: Vec<(u32, ConstValue)>,
    /// Active data segments: offset and bytes, in order.
    segments: Vec<(u32, Vec<u8>)>,
    /// Every data segment's index is kept; the copies come after them.
    existing_segments: u32,
    has_data_count: bool,
    exports: u32,
    /// Whether each global is mutable, by index.
    mutable: Vec<bool>,
    /// Each type's parameter count, and whether it is `(i32 i32 i32 i32) -> i32` (realloc's).
    types: Vec<(u32, bool)>,
    /// Each defined function's type.
    function_types: Vec<u32>,
    /// Exports named like an allocator (`cabi_realloc`): the host copies into what they return.
    reallocs: Vec<(String, u32)>,
}

#[derive(Clone, Copy)]
enum ConstValue {
    I32(i32),
    I64(i64),
    F32(u32),
    F64(u64),
}

impl Layout {
    /// How this module's writes can be tracked, or why they cannot.
    fn tracking(&self, module: &[u8]) -> Result<Tracking, String> {
        write_tracking::check(module, self.imported_functions)?;
        // The marks' global is added after the module's own (it has at least its stack
        // pointer: a module without globals keeps the whole reset).
        let globals = self.mutable.len() as u32;
        if globals == 0 {
            return Err("it has no global section".into());
        }
        for (name, index) in &self.reallocs {
            let realloc_like = index
                .checked_sub(self.imported_functions)
                .and_then(|defined| self.function_types.get(defined as usize))
                .and_then(|ty| self.types.get(*ty as usize))
                .is_some_and(|(_, realloc_like)| *realloc_like);
            if !realloc_like {
                return Err(format!("its export {name} is not an allocator it defines"));
            }
        }
        Ok(Tracking {
            blocks: WrittenBlocks::new(globals, self.memory_pages * PAGE_BYTES),
            reallocs: self.reallocs.clone(),
        })
    }

    /// The parameter count of defined function `defined`.
    fn params_of(&self, defined: usize) -> u32 {
        self.function_types
            .get(defined)
            .and_then(|ty| self.types.get(*ty as usize))
            .map_or(0, |(params, _)| *params)
    }

    fn read(module: &[u8]) -> Result<Self, String> {
        let mut layout = Layout::default();
        let mut memories = 0;
        for payload in Parser::new(0).parse_all(module) {
            let payload = payload.map_err(|e| format!("not a valid module: {e}"))?;
            layout.read_payload(payload, &mut memories)?;
        }
        if memories != 1 {
            return Err(format!("it defines {memories} memories, not one"));
        }
        // The rewrite adds to the type, function, export and code sections: all must exist.
        if layout.defined_functions == 0 || layout.exports == 0 {
            return Err("it defines or exports no function".into());
        }
        Ok(layout)
    }

    fn read_payload(&mut self, payload: Payload<'_>, memories: &mut u32) -> Result<(), String> {
        let invalid = |e: wasmparser::BinaryReaderError| format!("not a valid module: {e}");
        match payload {
            Payload::Version { encoding, .. } if encoding != wasmparser::Encoding::Module => {
                return Err("not a core module".into());
            }
            Payload::TypeSection(reader) => {
                for group in reader {
                    for ty in group.map_err(invalid)?.into_types() {
                        let CompositeInnerType::Func(func) = &ty.composite_type.inner else {
                            return Err("it uses garbage-collected types".into());
                        };
                        let i32 = wasmparser::ValType::I32;
                        let realloc_like = func.params() == [i32; 4] && func.results() == [i32];
                        self.types.push((func.params().len() as u32, realloc_like));
                    }
                }
            }
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import.map_err(invalid)?;
                    // WASI functions hand out host resources (streams, pollables) that would
                    // outlive a reset in the store; the policy interfaces hand out none.
                    if !import.module.starts_with("cachet:policy/") {
                        return Err(format!(
                            "it imports {} (only cachet:policy is reset)",
                            import.module
                        ));
                    }
                    match import.ty {
                        TypeRef::Func(_) | TypeRef::FuncExact(_) => self.imported_functions += 1,
                        _ => return Err("it imports state (a memory, table, global or tag)".into()),
                    }
                }
            }
            Payload::FunctionSection(reader) => {
                self.defined_functions = reader.count();
                for ty in reader {
                    self.function_types.push(ty.map_err(invalid)?);
                }
            }
            Payload::MemorySection(reader) => {
                for memory in reader {
                    let memory = memory.map_err(invalid)?;
                    if memory.memory64 || memory.shared || memory.page_size_log2.is_some() {
                        return Err("its memory is 64-bit, shared or of custom page size".into());
                    }
                    if memory.initial > MAX_RESET_PAGES {
                        return Err(format!(
                            "its memory starts at {} pages, more than {MAX_RESET_PAGES}",
                            memory.initial
                        ));
                    }
                    self.memory_pages = memory.initial;
                    *memories += 1;
                }
            }
            Payload::TagSection(_) => return Err("it defines exception tags".into()),
            Payload::GlobalSection(reader) => {
                for (index, global) in reader.into_iter().enumerate() {
                    let global = global.map_err(invalid)?;
                    self.mutable.push(global.ty.mutable);
                    if global.ty.mutable {
                        let value = const_value(&global.init_expr)
                            .ok_or("a mutable global starts from a non-constant value")?;
                        self.globals.push((index as u32, value));
                    }
                }
            }
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export.map_err(invalid)?;
                    self.exports += 1;
                    // wit-component reads names in two styles: `_initialize` is also
                    // `cm32p2_initialize`, and `name` also `cm32p2||name`. An initializer
                    // known by the second name ran at instantiation, and the reset undid it
                    // after every request.
                    let name = export
                        .name
                        .strip_prefix("cm32p2")
                        .map_or(export.name, |n| n.strip_prefix("||").unwrap_or(n));
                    // Any name built on the reset's: wit-component would take
                    // `cabi_post_cachet-reset` (or `cm32p2||cachet-reset_post`) for the
                    // reset's post-return, plugin code wasmtime runs right after every reset.
                    if export.name.contains(RESET_EXPORT) {
                        return Err(format!("it already exports {}", export.name));
                    }
                    if name == "_initialize" {
                        return Err(format!("it has an initializer ({})", export.name));
                    }
                    if export.kind == ExternalKind::Func && name.contains("realloc") {
                        self.reallocs.push((export.name.to_owned(), export.index));
                    }
                    // Rust exports `__data_end` and `__heap_base`: constants are harmless.
                    let constant = export.kind == ExternalKind::Global
                        && self.mutable.get(export.index as usize) == Some(&false);
                    if !matches!(export.kind, ExternalKind::Func | ExternalKind::Memory)
                        && !constant
                    {
                        return Err("it exports a table, a mutable global or a tag".into());
                    }
                }
            }
            Payload::StartSection { .. } => return Err("it has a start function".into()),
            Payload::DataCountSection { .. } => self.has_data_count = true,
            Payload::CodeSectionEntry(body) => {
                let mut operators = body.get_operators_reader().map_err(invalid)?;
                while !operators.eof() {
                    if let Some(what) = state_changing(&operators.read().map_err(invalid)?) {
                        return Err(format!("its code uses {what}"));
                    }
                }
            }
            Payload::DataSection(reader) => {
                for data in reader {
                    let data = data.map_err(invalid)?;
                    self.existing_segments += 1;
                    match data.kind {
                        DataKind::Active {
                            memory_index: 0,
                            offset_expr,
                        } => match const_value(&offset_expr) {
                            Some(ConstValue::I32(offset)) => {
                                self.segments.push((offset as u32, data.data.to_vec()))
                            }
                            _ => return Err("a data segment has a computed offset".into()),
                        },
                        _ => return Err("it has passive data segments".into()),
                    }
                }
            }
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => {
                return Err("not a core module".into());
            }
            _ => {}
        }
        Ok(())
    }
}

/// Operators whose effect the reset would not undo.
fn state_changing(op: &Operator<'_>) -> Option<&'static str> {
    Some(match op {
        Operator::TableSet { .. }
        | Operator::TableGrow { .. }
        | Operator::TableFill { .. }
        | Operator::TableCopy { .. }
        | Operator::TableInit { .. } => "table writes",
        Operator::ElemDrop { .. } | Operator::DataDrop { .. } => "segment drops",
        Operator::MemoryInit { .. } => "passive segments",
        _ => return None,
    })
}

/// The value of a constant expression made of one constant.
fn const_value(expr: &wasmparser::ConstExpr<'_>) -> Option<ConstValue> {
    let mut reader = expr.get_operators_reader();
    let value = match reader.read().ok()? {
        Operator::I32Const { value } => ConstValue::I32(value),
        Operator::I64Const { value } => ConstValue::I64(value),
        Operator::F32Const { value } => ConstValue::F32(value.bits()),
        Operator::F64Const { value } => ConstValue::F64(value.bits()),
        _ => return None,
    };
    matches!(reader.read().ok()?, Operator::End).then_some(value)
}

/// The module again, section by section, with the reset's type, function, export, body and
/// segment copies added. Everything else is copied byte for byte; the new function comes
/// last, so no existing index moves.
fn rewrite(module: &[u8], layout: &Layout, tracking: Option<&Tracking>) -> Result<Vec<u8>, String> {
    let cannot = |e: wasm_encoder::reencode::Error| format!("cannot rewrite: {e}");
    let mut out = Module::new();
    let mut reset_type = None;
    let mut code = None::<CodeSection>;
    let mut defined = 0usize;
    let reset_index = layout.imported_functions + layout.defined_functions;
    // The allocator wrappers come after the reset, one per wrapped export.
    let wrappers: Vec<(&str, u32, u32)> = tracking
        .map(|t| t.reallocs.as_slice())
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, (name, original))| (name.as_str(), *original, reset_index + 1 + i as u32))
        .collect();
    let finish_code = |mut code: CodeSection| {
        code.function(&reset_function(layout, tracking));
        for (_, original, _) in &wrappers {
            code.function(&write_tracking::realloc_wrapper(
                *original,
                tracking
                    .map(|t| t.blocks)
                    .expect("wrappers only when tracking"),
            ));
        }
        code
    };
    let total_segments = layout.existing_segments + layout.segments.len() as u32;
    for payload in Parser::new(0).parse_all(module) {
        let payload = payload.map_err(|e| cannot(e.into()))?;
        match payload {
            Payload::TypeSection(reader) => {
                let mut types = TypeSection::new();
                let existing = reader.count();
                RoundtripReencoder
                    .parse_type_section(&mut types, reader)
                    .map_err(cannot)?;
                types.ty().function([], [ValType::I32]);
                reset_type = Some(existing);
                out.section(&types);
            }
            Payload::FunctionSection(reader) => {
                let mut functions = FunctionSection::new();
                for ty in reader {
                    functions.function(ty.map_err(|e| cannot(e.into()))?);
                }
                let Some(reset_type) = reset_type else {
                    return Err("functions without a type section".into());
                };
                functions.function(reset_type);
                for (_, original, _) in &wrappers {
                    let defined = original - layout.imported_functions;
                    functions.function(layout.function_types[defined as usize]);
                }
                out.section(&functions);
            }
            Payload::ExportSection(reader) => {
                let mut exports = ExportSection::new();
                for export in reader {
                    let export = export.map_err(|e| cannot(e.into()))?;
                    let kind = RoundtripReencoder
                        .export_kind(export.kind)
                        .map_err(cannot)?;
                    // The host's copies go through the wrapper, which marks what they fill.
                    let index = wrappers
                        .iter()
                        .find(|(name, ..)| *name == export.name)
                        .map_or(export.index, |(_, _, wrapper)| *wrapper);
                    exports.export(export.name, kind, index);
                }
                exports.export(RESET_EXPORT, ExportKind::Func, reset_index);
                out.section(&exports);
            }
            Payload::DataCountSection { .. } => {
                out.section(&DataCountSection {
                    count: total_segments,
                });
            }
            Payload::CodeSectionStart { .. } => {
                if !layout.has_data_count {
                    out.section(&DataCountSection {
                        count: total_segments,
                    });
                }
                code = Some(CodeSection::new());
            }
            Payload::GlobalSection(reader) if tracking.is_some() => {
                let mut globals = GlobalSection::new();
                RoundtripReencoder
                    .parse_global_section(&mut globals, reader)
                    .map_err(cannot)?;
                let marks = GlobalType {
                    val_type: ValType::I64,
                    mutable: true,
                    shared: false,
                };
                globals.global(marks, &ConstExpr::i64_const(0));
                out.section(&globals);
            }
            Payload::CodeSectionEntry(body) => {
                let params = layout.params_of(defined);
                defined += 1;
                let instrumented = match tracking {
                    Some(t) => write_tracking::instrument(
                        &body,
                        params,
                        layout.imported_functions,
                        t.blocks,
                    )?,
                    None => None,
                };
                if let Some(code) = code.as_mut() {
                    match instrumented {
                        Some(function) => {
                            code.function(&function);
                        }
                        None => {
                            let range = body.range();
                            code.raw(&module[range.start as usize..range.end as usize]);
                        }
                    }
                }
            }
            Payload::DataSection(reader) => {
                if let Some(code) = code.take() {
                    out.section(&finish_code(code));
                }
                let mut data = DataSection::new();
                for segment in reader {
                    let segment = segment.map_err(|e| cannot(e.into()))?;
                    data.raw(&module[segment.range.start as usize..segment.range.end as usize]);
                }
                for (_, bytes) in &layout.segments {
                    data.passive(bytes.iter().copied());
                }
                out.section(&data);
            }
            other => {
                if let Some(code) = code.take() {
                    // A module without a data section: the code section ends here.
                    out.section(&finish_code(code));
                }
                if let Some((id, range)) = other.as_section() {
                    out.section(&RawSection {
                        id,
                        data: &module[range.start as usize..range.end as usize],
                    });
                }
            }
        }
    }
    Ok(out.finish())
}

/// `() -> i32`: 1 once the memory and globals are as a new instance has them, 0 (and nothing
/// touched) when the memory has grown.
fn reset_function(layout: &Layout, tracking: Option<&Tracking>) -> Function {
    let mut f = match tracking {
        Some(_) => Function::new(write_tracking::RESTORE_LOCALS),
        None => Function::new([]),
    };
    let memory_bytes = layout.memory_pages * PAGE_BYTES;
    f.instruction(&Instruction::MemorySize(0))
        .instruction(&Instruction::I32Const(layout.memory_pages as i32))
        .instruction(&Instruction::I32Ne)
        .instruction(&Instruction::If(wasm_encoder::BlockType::Empty))
        .instruction(&Instruction::I32Const(0))
        .instruction(&Instruction::Return)
        .instruction(&Instruction::End);
    if let Some(tracking) = tracking {
        let segments: Vec<(u32, usize)> = layout
            .segments
            .iter()
            .map(|(offset, bytes)| (*offset, bytes.len()))
            .collect();
        write_tracking::restore_written(
            &mut f,
            memory_bytes,
            &segments,
            layout.existing_segments,
            tracking.blocks,
        );
        return finish_reset(f, layout);
    }
    // Zeros where no segment writes, then the segments in their own order (a later one may
    // overwrite an earlier one, as at instantiation).
    for (start, len) in gaps(&layout.segments, memory_bytes) {
        f.instruction(&Instruction::I32Const(start as i32))
            .instruction(&Instruction::I32Const(0))
            .instruction(&Instruction::I32Const(len as i32))
            .instruction(&Instruction::MemoryFill(0));
    }
    for (i, (offset, bytes)) in layout.segments.iter().enumerate() {
        f.instruction(&Instruction::I32Const(*offset as i32))
            .instruction(&Instruction::I32Const(0))
            .instruction(&Instruction::I32Const(bytes.len() as i32))
            .instruction(&Instruction::MemoryInit {
                mem: 0,
                data_index: layout.existing_segments + i as u32,
            });
    }
    finish_reset(f, layout)
}

/// Every mutable global back to its initial constant, then 1.
fn finish_reset(mut f: Function, layout: &Layout) -> Function {
    for (index, value) in &layout.globals {
        f.instruction(&match *value {
            ConstValue::I32(v) => Instruction::I32Const(v),
            ConstValue::I64(v) => Instruction::I64Const(v),
            ConstValue::F32(bits) => Instruction::F32Const(f32::from_bits(bits).into()),
            ConstValue::F64(bits) => Instruction::F64Const(f64::from_bits(bits).into()),
        })
        .instruction(&Instruction::GlobalSet(*index));
    }
    f.instruction(&Instruction::I32Const(1))
        .instruction(&Instruction::End);
    f
}

/// The byte ranges `(start, len)` of `0..memory_bytes` no segment covers.
fn gaps(segments: &[(u32, Vec<u8>)], memory_bytes: u64) -> Vec<(u64, u64)> {
    let mut covered: Vec<(u64, u64)> = segments
        .iter()
        .map(|(offset, bytes)| (u64::from(*offset), u64::from(*offset) + bytes.len() as u64))
        .collect();
    covered.sort_unstable();
    let mut gaps = Vec::new();
    let mut cursor = 0;
    for (start, end) in covered {
        if start > cursor {
            gaps.push((cursor, start - cursor));
        }
        cursor = cursor.max(end);
    }
    if memory_bytes > cursor {
        gaps.push((cursor, memory_bytes - cursor));
    }
    gaps
}

/// Adds a `component-type` section declaring the reset export; wit-component merges it with
/// the policy's own world when it builds the component.
fn declare_in_world(module: &mut Vec<u8>) -> Result<(), String> {
    let mut resolve = wit_parser::Resolve::default();
    let package = resolve
        .push_str("cachet-reset.wit", RESET_WORLD)
        .map_err(|e| format!("reset world: {e:#}"))?;
    let world = resolve
        .select_world(&[package], Some("reset"))
        .map_err(|e| format!("reset world: {e:#}"))?;
    wit_component::embed_component_metadata(
        module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
    )
    .map_err(|e| format!("reset world: {e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::{Engine, Instance, Memory, Store};

    /// One page with a data segment and two mutable globals, and a function that changes
    /// all of it (and, given 1, grows the memory).
    const MODULE: &str = r#"
        (module
          (memory (export "memory") 1)
          (global $sp (mut i32) (i32.const 4096))
          (global $big (mut i64) (i64.const -7))
          (global $fixed i32 (i32.const 3))
          (data (i32.const 1024) "initial state")
          (data (i32.const 1030) "STATE")
          (func (export "scribble") (param $grow i32)
            (i32.store (i32.const 1024) (i32.const 0x41414141))
            (i64.store (i32.const 60000) (i64.const -1))
            (global.set $sp (i32.const 1))
            (global.set $big (i64.const 99))
            (if (local.get $grow) (then (drop (memory.grow (i32.const 1))))))
          (func (export "sp") (result i32) global.get $sp)
          (func (export "big") (result i64) global.get $big))
    "#;

    fn instance(wasm: &[u8]) -> (Store<()>, Instance, Memory) {
        let engine = Engine::default();
        let module = wasmtime::Module::new(&engine, wasm).expect("valid module");
        let mut store = Store::new(&engine, ());
        let instance = Instance::new(&mut store, &module, &[]).expect("instantiates");
        let memory = instance.get_memory(&mut store, "memory").expect("memory");
        (store, instance, memory)
    }

    fn call<R: wasmtime::WasmResults>(store: &mut Store<()>, instance: &Instance, name: &str) -> R {
        let func = instance
            .get_typed_func::<(), R>(&mut *store, name)
            .expect(name);
        func.call(store, ()).expect(name)
    }

    #[test]
    fn the_reset_restores_memory_and_globals_as_instantiation_left_them() {
        let wasm = inject(&wat::parse_str(MODULE).unwrap()).expect("resettable");
        let (mut store, instance, memory) = instance(&wasm);
        let initial = memory.data(&store).to_vec();
        assert_eq!(&initial[1024..1037], b"initiaSTATEte");

        let scribble = instance
            .get_typed_func::<i32, ()>(&mut store, "scribble")
            .unwrap();
        scribble.call(&mut store, 0).unwrap();
        assert_ne!(memory.data(&store), &initial[..]);
        assert_eq!(call::<i32>(&mut store, &instance, "sp"), 1);

        assert_eq!(call::<i32>(&mut store, &instance, RESET_EXPORT), 1);
        assert!(memory.data(&store) == &initial[..], "memory restored");
        assert_eq!(call::<i32>(&mut store, &instance, "sp"), 4096);
        assert_eq!(call::<i64>(&mut store, &instance, "big"), -7);
    }

    /// A bump allocator as the host's copies use it, and functions writing memory in every
    /// way the tracking covers: each kind of store, `memory.fill`, `memory.copy`, from a
    /// callee, and on the ways out of a function (`return`, a branch to its label, a
    /// `br_table`).
    const WRITER: &str = r#"
        (module
          (memory (export "memory") 1)
          (global $sp (mut i32) (i32.const 32768))
          (global $bump (mut i32) (i32.const 40000))
          (data (i32.const 32768) "data segment, restored where written")
          (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
            (global.get $bump)
            (global.set $bump (i32.add (global.get $bump) (local.get 3))))
          (func (export "store") (param $kind i32) (param $at i32) (param $v i64)
            (block $done
              (block $b10 (block $b9 (block $b8 (block $b7 (block $b6 (block $b5
              (block $b4 (block $b3 (block $b2 (block $b1 (block $b0
                (br_table $b0 $b1 $b2 $b3 $b4 $b5 $b6 $b7 $b8 $b9 $b10 $done (local.get $kind)))
                (i32.store offset=3 (local.get $at) (i32.wrap_i64 (local.get $v))) (return))
                (i32.store8 (local.get $at) (i32.wrap_i64 (local.get $v))) (br $done))
                (i32.store16 (local.get $at) (i32.wrap_i64 (local.get $v))) (br 9))
                (i64.store (local.get $at) (local.get $v)) (return))
                (i64.store8 (local.get $at) (local.get $v)) (return))
                (i64.store16 (local.get $at) (local.get $v)) (return))
                (i64.store32 (local.get $at) (local.get $v)) (return))
                (f32.store (local.get $at) (f32.convert_i64_s (local.get $v))) (return))
                (f64.store (local.get $at) (f64.convert_i64_s (local.get $v))) (return))
                (v128.store (local.get $at) (i64x2.splat (local.get $v))) (return))
                (v128.store8_lane 3 (local.get $at) (i64x2.splat (local.get $v))) (return))
            (call $leaf (local.get $at)))
          (func $leaf (param $at i32)
            (i64.store offset=8 (local.get $at) (i64.const -1)))
          (func (export "fill") (param $at i32) (param $n i32)
            (memory.fill (local.get $at) (i32.const 0x5a) (local.get $n)))
          (func (export "copy") (param $to i32) (param $from i32) (param $n i32) (result i32)
            (memory.copy (local.get $to) (local.get $from) (local.get $n))
            (local.get $n)))
    "#;

    /// A small deterministic generator (xorshift), so a failure repeats.
    struct Numbers(u64);
    impl Numbers {
        fn next(&mut self, below: u32) -> u32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % u64::from(below)) as u32
        }
    }

    #[test]
    fn every_write_a_tracked_module_makes_is_undone() {
        let wasm = inject(&wat::parse_str(WRITER).unwrap()).expect("resettable");
        let (mut store, instance, memory) = instance(&wasm);
        let initial = memory.data(&store).to_vec();
        let store_fn = instance
            .get_typed_func::<(i32, i32, i64), ()>(&mut store, "store")
            .unwrap();
        let fill = instance
            .get_typed_func::<(i32, i32), ()>(&mut store, "fill")
            .unwrap();
        let copy = instance
            .get_typed_func::<(i32, i32, i32), i32>(&mut store, "copy")
            .unwrap();
        let realloc = instance
            .get_typed_func::<(i32, i32, i32, i32), i32>(&mut store, "cabi_realloc")
            .unwrap();
        let mut numbers = Numbers(0x9e37_79b9_7f4a_7c15);
        let size = initial.len() as u32;
        // Each kind of store at a block's last byte (blocks are 1 KiB here): it runs on into
        // the next block, which it does not mark.
        for kind in 0..12 {
            store_fn
                .call(&mut store, (kind, 1024 * (kind + 2) - 1, -1))
                .unwrap();
            assert_eq!(call::<i32>(&mut store, &instance, RESET_EXPORT), 1);
            assert!(
                memory.data(&store) == &initial[..],
                "store kind {kind} undone"
            );
        }
        for round in 0..300 {
            for _ in 0..1 + numbers.next(4) {
                let at = numbers.next(size - 320) as i32;
                match numbers.next(4) {
                    0 | 1 => {
                        let kind = numbers.next(12) as i32;
                        let value = i64::from(numbers.next(u32::MAX)) | 1;
                        store_fn.call(&mut store, (kind, at, value)).unwrap();
                    }
                    2 => fill
                        .call(&mut store, (at, numbers.next(300) as i32))
                        .unwrap(),
                    _ => {
                        let to = numbers.next(size - 4096) as i32;
                        copy.call(&mut store, (to, 32768, numbers.next(4096) as i32))
                            .unwrap();
                    }
                }
            }
            // What wasmtime does with a string it hands the plugin: a block from the
            // plugin's allocator, filled by the host.
            let len = 1 + numbers.next(2000);
            let block = realloc.call(&mut store, (0, 0, 1, len as i32)).unwrap();
            memory
                .write(&mut store, block as usize, &vec![0xee; len as usize])
                .unwrap();
            assert_eq!(call::<i32>(&mut store, &instance, RESET_EXPORT), 1);
            let now = memory.data(&store);
            if let Some(at) = (0..now.len()).find(|&i| now[i] != initial[i]) {
                panic!(
                    "round {round}: byte {at} is {} after the reset, not {}",
                    now[at], initial[at]
                );
            }
        }
    }

    #[test]
    fn a_tracked_reset_rewrites_only_what_was_written() {
        let wasm = inject(&wat::parse_str(MODULE).unwrap()).expect("resettable");
        let (mut store, instance, memory) = instance(&wasm);
        let scribble = instance
            .get_typed_func::<i32, ()>(&mut store, "scribble")
            .unwrap();
        scribble.call(&mut store, 0).unwrap();
        // Written behind the module's back (not through its allocator, nor by an import):
        // outside the range it wrote (1024..60008), so the reset leaves it.
        memory.write(&mut store, 61000, b"untracked").unwrap();
        assert_eq!(call::<i32>(&mut store, &instance, RESET_EXPORT), 1);
        assert_eq!(&memory.data(&store)[1024..1037], b"initiaSTATEte");
        assert_eq!(memory.data(&store)[60000], 0);
        assert_eq!(&memory.data(&store)[61000..61009], b"untracked");
    }

    /// An import may write through any pointer it is given: after a call to one the whole
    /// memory is restored. And a module whose table holds an import (reachable through
    /// `call_indirect`) keeps the reset that rewrites everything.
    #[test]
    fn imports_mark_the_whole_memory_written() {
        let calls_import = r#"
            (module
              (import "cachet:policy/host@0.3.0" "log" (func $log (param i32 i32)))
              (memory (export "memory") 1)
              (global $sp (mut i32) (i32.const 1024))
              (func (export "f") (call $log (i32.const 0) (i32.const 0))))
        "#;
        let in_table = r#"
            (module
              (import "cachet:policy/host@0.3.0" "log" (func $log (param i32 i32)))
              (memory (export "memory") 1)
              (global $sp (mut i32) (i32.const 1024))
              (table 1 funcref)
              (elem (i32.const 0) $log)
              (func (export "f") (call_indirect (param i32 i32) (i32.const 0) (i32.const 0) (i32.const 0))))
        "#;
        for module in [calls_import, in_table] {
            let wasm = inject(&wat::parse_str(module).unwrap()).expect("resettable");
            let engine = Engine::default();
            let module = wasmtime::Module::new(&engine, &wasm).unwrap();
            let mut store = Store::new(&engine, ());
            let mut linker = wasmtime::Linker::new(&engine);
            linker
                .func_wrap(
                    "cachet:policy/host@0.3.0",
                    "log",
                    |mut caller: wasmtime::Caller<'_, ()>, _: i32, _: i32| {
                        let memory = caller.get_export("memory").unwrap().into_memory().unwrap();
                        memory
                            .write(&mut caller, 50000, b"written by the host")
                            .unwrap();
                    },
                )
                .unwrap();
            let instance = linker.instantiate(&mut store, &module).unwrap();
            let memory = instance.get_memory(&mut store, "memory").unwrap();
            let initial = memory.data(&store).to_vec();
            call::<()>(&mut store, &instance, "f");
            assert_ne!(memory.data(&store), &initial[..]);
            assert_eq!(call::<i32>(&mut store, &instance, RESET_EXPORT), 1);
            assert!(memory.data(&store) == &initial[..], "memory restored");
        }
    }

    #[test]
    fn a_grown_memory_is_refused_and_left_alone() {
        let wasm = inject(&wat::parse_str(MODULE).unwrap()).expect("resettable");
        let (mut store, instance, memory) = instance(&wasm);
        let scribble = instance
            .get_typed_func::<i32, ()>(&mut store, "scribble")
            .unwrap();
        scribble.call(&mut store, 1).unwrap();
        assert_eq!(call::<i32>(&mut store, &instance, RESET_EXPORT), 0);
        assert_eq!(call::<i32>(&mut store, &instance, "sp"), 1);
        assert_eq!(memory.data(&store)[1024], 0x41);
    }

    #[test]
    fn gaps_cover_what_no_segment_writes() {
        let segments = vec![(10, vec![0; 5]), (12, vec![0; 10]), (40, vec![0; 2])];
        assert_eq!(gaps(&segments, 64), [(0, 10), (22, 18), (42, 22)]);
        assert_eq!(gaps(&[], 64), [(0, 64)]);
    }

    #[test]
    fn modules_with_state_the_reset_cannot_restore_are_refused_with_the_reason() {
        let refused = |body: &str| {
            let text = format!("(module (memory 1) (func (export \"f\")) {body})");
            inject(&wat::parse_str(&text).unwrap()).expect_err(body)
        };
        let table = "(table 1 funcref) (func (table.set (i32.const 0) (ref.null func)))";
        assert!(refused(table).contains("table writes"));
        assert!(refused("(func $s) (start $s)").contains("start function"));
        assert!(refused("(data \"passive\")").contains("passive data segments"));
        assert!(refused("(global (export \"g\") (mut i32) (i32.const 0))").contains("exports a"));
        let imported =
            "(module (import \"cachet:policy/host@0.3.0\" \"m\" (memory 1)) (func (export \"f\")))";
        let err = inject(&wat::parse_str(imported).unwrap()).unwrap_err();
        assert!(err.contains("imports state"), "{err}");
        let wasi = "(module (import \"wasi:io/poll@0.2.6\" \"poll\" (func)) (memory 1) (func (export \"f\")))";
        let err = inject(&wat::parse_str(wasi).unwrap()).unwrap_err();
        assert!(err.contains("imports wasi:io/poll@0.2.6"), "{err}");
        let big = "(module (memory 65) (func (export \"f\")))";
        let err = inject(&wat::parse_str(big).unwrap()).unwrap_err();
        assert!(err.contains("65 pages"), "{err}");
        // An initializer by either of its names: the reset would undo it after each request.
        for name in ["_initialize", "cm32p2_initialize"] {
            let err = refused(&format!("(func (export \"{name}\"))"));
            assert!(err.contains("initializer") && err.contains(name), "{err}");
        }
        // Or a name wit-component would attach to the reset: its post-return, plugin code run
        // after every reset.
        let reset_names = [
            "cachet-reset",
            "cm32p2||cachet-reset",
            "cabi_post_cachet-reset",
            "cm32p2||cachet-reset_post",
            "[async-lift]cachet-reset",
        ];
        for name in reset_names {
            let err = refused(&format!("(func (export \"{name}\"))"));
            assert!(err.contains("already exports"), "{err}");
        }
    }

    /// A module whose function section names a type no type section declares (invalid:
    /// the rewrite used to assume the type section and panicked the reload thread).
    #[test]
    fn an_invalid_module_is_refused_not_a_panic() {
        use wasm_encoder::{
            CodeSection, ExportSection, Function, FunctionSection, Instruction, MemorySection,
            MemoryType,
        };
        let mut module = Module::new();
        let mut functions = FunctionSection::new();
        functions.function(0);
        module.section(&functions);
        let mut memories = MemorySection::new();
        memories.memory(MemoryType {
            minimum: 1,
            maximum: None,
            memory64: false,
            shared: false,
            page_size_log2: None,
        });
        module.section(&memories);
        let mut exports = ExportSection::new();
        exports.export("f", ExportKind::Func, 0);
        module.section(&exports);
        let mut code = CodeSection::new();
        let mut body = Function::new([]);
        body.instruction(&Instruction::End);
        code.function(&body);
        module.section(&code);
        let err = inject(&module.finish()).unwrap_err();
        assert!(err.contains("not a valid module"), "{err}");
    }
}
