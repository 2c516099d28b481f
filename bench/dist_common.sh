# Sourced by the distributed benchmarks (dist_train.sh, dist_export.sh) from the repository root:
# the peer's venv (peer_venv.sh), xtuner built in $BUILD, a scratch directory $OUT removed on
# exit, Open MPI's settings for root and one OpenMP thread per rank, and qwen3_moe_config.
source bench/peer_venv.sh
cmake -S . -B "$BUILD" > /dev/null
cmake --build "$BUILD" --target xtuner -j2 > /dev/null
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl=self,vader
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE

# qwen3_moe_config FILE HIDDEN INTERMEDIATE MOE_INTERMEDIATE LAYERS HEADS KV_HEADS HEAD_DIM
#   EXPERTS TOP_K: an untied Qwen3-MoE config.json over the demo tokenizer's 3008 tokens.
qwen3_moe_config() {
  cat > "$1" <<JSON
{"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": $2,
 "intermediate_size": $3, "moe_intermediate_size": $4, "num_hidden_layers": $5,
 "num_attention_heads": $6, "num_key_value_heads": $7, "head_dim": $8, "num_experts": $9,
 "num_experts_per_tok": ${10}, "norm_topk_prob": true, "vocab_size": 3008,
 "max_position_embeddings": 4096, "rms_norm_eps": 1e-06, "rope_theta": 1000000,
 "tie_word_embeddings": false, "decoder_sparse_step": 1, "mlp_only_layers": [],
 "router_aux_loss_coef": 0.001, "output_router_logits": false, "hidden_act": "silu"}
JSON
}
