// lfmq-run: lfmq's own runner against llama.h, shipped in every device bundle (lfmq/devices/build.py builds it).
// It measures what llama-bench measures, the way lfmq/bench/case.py does, and adds what llama-bench lacks: load
// time, time to first token and peak memory from /proc/self/status. It also decodes greedily, token by token.
//
//   lfmq-run bench -m MODEL -p N_PROMPT -n N_GEN [-d DEPTH] [-r REPS] [-t THREADS] [-b N_BATCH] [-ub N_UBATCH]
//                  [-c N_CTX] [--mmap 0|1] [-fa -1|0|1] [-ctk TYPE] [-ctv TYPE] [--seed S] [--ttft-tokens ID,...]
//       prints one JSON line with the keys of lfmq.bench.case.run() plus "system_info" and "runner"
//   lfmq-run generate -m MODEL (--tokens ID,... | --prompt TEXT) -n N [-t THREADS] [-c N_CTX] [--mmap 0|1]
//                     [-fa -1|0|1] [-ctk TYPE] [-ctv TYPE] [--greedy] [--ignore-eos] [--top K]
//       prints {"event":"token","id":..,"text":..} per token (with "top": [[id, logit], ...] under --top K),
//       then {"event":"done","tokens":[...],"ttft_ms":..,"tg_tps":..,"vmhwm":..}
//
// Every failure prints {"event":"error","message":...} on stdout: exit 1, or 2 for a wrong command line.
// llama.cpp's log goes to stderr, errors only, so stdout holds nothing but JSON lines.

#include "session.h"

#include <chrono>
#include <cstdio>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace lfmq_run {

// ---------------------------------------------------------------------------------------------- commands

int bench(int argc, char ** argv) {
    Args a = parse(argc, argv, {"-m", "-p", "-n", "-d", "-r", "-t", "-b", "-ub", "-c", "--mmap", "-fa", "-ctk", "-ctv",
                                "--seed", "--ttft-tokens"}, {});
    if (!a.has("-m")) usage("bench needs -m MODEL");
    const long n_prompt = a.num("-p", 512), n_gen = a.num("-n", 128), depth = a.num("-d", 0), reps = a.num("-r", 5);
    if (n_prompt < 0 || n_gen < 0 || depth < 0 || reps < 1) usage("-p, -n and -d must be >= 0 and -r >= 1");
    std::vector<llama_token> ttft_tokens;
    if (a.has("--ttft-tokens")) ttft_tokens = parse_ids(a.str("--ttft-tokens"));
    Settings settings = settings_from(a);
    std::mt19937_64 rng(static_cast<uint64_t>(a.num("--seed", 42)));

    Session m;
    auto started = clk::now();
    m.open(a.str("-m"), settings);
    const double load_ms = ms_since(started);

    // warm-up, as llama-bench does: one batch of prompt, one generated token
    if (n_prompt) m.decode(random_tokens(rng, m.n_vocab, std::min<long>(n_prompt, m.s.n_batch)), 0);
    if (n_gen) m.decode(random_tokens(rng, m.n_vocab, 1), n_prompt ? std::min<long>(n_prompt, m.s.n_batch) : 0);
    std::vector<long long> samples;
    for (long r = 0; r < reps; r++) {
        m.reset();
        if (depth) m.decode(random_tokens(rng, m.n_vocab, depth), 0);  // before the timer: depth is the setting
        auto t = clk::now();
        if (n_prompt) m.decode(random_tokens(rng, m.n_vocab, n_prompt), static_cast<int>(depth));
        for (long i = 0; i < n_gen; i++)  // one token at a time; the token does not change the work
            m.decode(random_tokens(rng, m.n_vocab, 1), static_cast<int>(depth + n_prompt + i));
        samples.push_back(std::chrono::duration_cast<std::chrono::nanoseconds>(clk::now() - t).count());
    }
    // a chat-sized prompt from an empty context to its greedy first token: the caller's tokens (lfmq renders its
    // chat through the model's Jinja template), else the same chat through llama.cpp's built-in template matcher
    if (ttft_tokens.empty()) ttft_tokens = m.chat_tokens();
    m.reset();
    auto t_first = clk::now();
    m.decode(ttft_tokens, 0);
    m.argmax();
    const std::string ttft = jnum(ms_since(t_first));
    auto mem = memory_status();  // with the model still loaded

    std::ostringstream o;
    o << "{\"samples_ns\":[";
    for (size_t i = 0; i < samples.size(); i++) o << (i ? "," : "") << samples[i];
    o << "],\"load_ms\":" << jnum(load_ms) << ",\"ttft_ms\":" << ttft << ",\"settings\":{"
      << "\"n_ctx\":" << m.s.n_ctx << ",\"threads\":" << m.s.threads << ",\"n_batch\":" << m.s.n_batch
      << ",\"n_ubatch\":" << m.s.n_ubatch << ",\"use_mmap\":" << (m.s.use_mmap ? "true" : "false")
      << ",\"flash_attn\":" << (m.s.flash_attn < 0 ? "null" : m.s.flash_attn ? "true" : "false")
      << ",\"type_k\":" << jstr(m.s.type_k) << ",\"type_v\":" << jstr(m.s.type_v) << ",\"n_seq_max\":1}"
      << ",\"model_type\":" << jstr(m.describe()) << ",\"model_size\":" << llama_model_size(m.model)
      << ",\"model_n_params\":" << llama_model_n_params(m.model);
    for (const char * k : {"vmhwm", "vmrss", "rssanon", "rssfile"}) o << ",\"" << k << "\":" << jnum(mem[k]);
    o << ",\"system_info\":" << jstr(llama_print_system_info()) << ",\"runner\":\"lfmq-run\"}";
    emit(o.str());
    return 0;
}

int generate(int argc, char ** argv) {
    Args a = parse(argc, argv, {"-m", "--tokens", "--prompt", "-n", "-t", "-c", "--mmap", "-fa", "-ctk", "-ctv",
                                "--top"},
                   {"--greedy", "--ignore-eos"});
    if (!a.has("-m")) usage("generate needs -m MODEL");
    if (a.has("--tokens") == a.has("--prompt")) usage("generate needs one of --tokens ID,... or --prompt TEXT");
    const long n = a.num("-n", 32);
    if (n < 1) usage("-n must be >= 1");
    const bool ignore_eos = a.has("--ignore-eos");
    const long top = a.num("--top", 0);  // diagnostics: the top logits beside each token, for parity checks
    if (top < 0) usage("--top must be >= 0");
    Settings settings = settings_from(a);

    Session m;
    m.open(a.str("-m"), settings);
    std::vector<llama_token> prompt;
    if (a.has("--tokens")) {
        prompt = parse_ids(a.str("--tokens"));
    } else {
        if (a.str("--prompt").empty()) usage("the prompt is empty");
        prompt = m.tokenize(a.str("--prompt"), llama_vocab_get_add_bos(m.vocab));
    }
    if (prompt.empty()) usage("the prompt is empty");

    auto started = clk::now();
    m.decode(prompt, 0);
    llama_token tok = m.argmax();
    const double ttft_ms = ms_since(started);
    std::vector<llama_token> out;
    std::string pending;
    auto t_gen = clk::now();
    long decoded = 0;
    while (true) {
        if (!ignore_eos && llama_vocab_is_eog(m.vocab, tok)) break;
        out.push_back(tok);
        pending += m.piece(tok);
        emit("{\"event\":\"token\",\"id\":" + std::to_string(tok) + ",\"text\":" + jstr(take_complete(pending)) +
             (top ? ",\"top\":" + m.top_logits(static_cast<int>(top)) : std::string()) + "}");
        if (static_cast<long>(out.size()) >= n) break;
        m.decode({tok}, static_cast<int>(prompt.size() + out.size() - 1));
        tok = m.argmax();
        decoded++;
    }
    const double gen_s = ms_since(t_gen) / 1e3;
    auto mem = memory_status();
    std::ostringstream o;
    o << "{\"event\":\"done\",\"tokens\":[";
    for (size_t i = 0; i < out.size(); i++) o << (i ? "," : "") << out[i];
    o << "],\"ttft_ms\":" << jnum(ttft_ms) << ",\"tg_tps\":" << (decoded && gen_s > 0 ? jnum(decoded / gen_s) : "null")
      << ",\"vmhwm\":" << jnum(mem["vmhwm"]) << "}";
    emit(o.str());
    return 0;
}

const char * USAGE =
    "usage: lfmq-run bench -m MODEL -p N_PROMPT -n N_GEN [-d DEPTH] [-r REPS] [-t THREADS] [-b N_BATCH]\n"
    "                      [-ub N_UBATCH] [-c N_CTX] [--mmap 0|1] [-fa -1|0|1] [-ctk TYPE] [-ctv TYPE] [--seed S]\n"
    "                      [--ttft-tokens ID,ID,...]\n"
    "       lfmq-run generate -m MODEL (--tokens ID,ID,... | --prompt TEXT) -n N [-t THREADS] [-c N_CTX]\n"
    "                      [--mmap 0|1] [-fa -1|0|1] [-ctk TYPE] [-ctv TYPE] [--greedy] [--ignore-eos] [--top K]\n";

}  // namespace lfmq_run

int main(int argc, char ** argv) {
    using namespace lfmq_run;
    llama_log_set(log_to_stderr, nullptr);
    const std::string cmd = argc > 1 ? argv[1] : "";
    int rc = 0;
    try {
        if (cmd == "-h" || cmd == "--help") { fputs(USAGE, stdout); return 0; }
        if (cmd != "bench" && cmd != "generate") usage(cmd.empty() ? "no command: bench or generate" : "unknown command " + cmd);
        llama_backend_init();
        rc = cmd == "bench" ? bench(argc, argv) : generate(argc, argv);
    } catch (const Failure & e) {
        emit("{\"event\":\"error\",\"message\":" + jstr(e.what()) + "}");
        if (e.code == 2) fputs(USAGE, stderr);
        rc = e.code;
    } catch (const std::exception & e) {
        emit("{\"event\":\"error\",\"message\":" + jstr(e.what()) + "}");
        rc = 1;
    }
    llama_backend_free();
    return rc;
}
